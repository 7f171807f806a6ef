"""Continuous batching: one worker thread owns the model and decodes every running request one token per step. A
request joins the batch at the next step (its prompt prefilled, its state concatenated to the batch's) and leaves
when it ends, so each keeps its own r, exit, sampling, seed and stop conditions, and a request's tokens are those it
would get alone (rows never read each other: see `DecodeState`)."""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recurlm.config import InferencePolicy
from recurlm.engine import DecodeState, Engine
from recurlm.tokenizer import Tokenizer
from recurlm.tools import Calculator


class Busy(Exception):
    """The batch and the queue are full."""


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    policy: InferencePolicy
    emit: Callable[[int | None, int, str | None], None]  # (token, steps, None) per token; (None, 0, reason) at the end
    seed: int = 0
    cancelled: bool = False  # set by the client's side (it went away): the row leaves at the next step
    generated: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # the calculator's tokens still to feed
    gen: torch.Generator | None = None


class Batcher:
    def __init__(self, model, tok: Tokenizer, max_batch: int = 64, max_queue: int = 256):
        self.engine, self.tok = Engine(model, tok.digit_ids), tok
        self.tool, self.stops = Calculator.for_tokenizer(tok), set(tok.stop_ids)
        self.context = model.cfg.seq_len
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.active = 0  # requests in the batch (read by tests and /health)
        self.lock = threading.Lock()
        threading.Thread(target=self._loop, name="recurlm-batcher", daemon=True).start()

    def submit(self, request: Request):
        with self.lock:
            if self.waiting.qsize() + self.active >= self.max_batch + self.max_queue:
                raise Busy
            self.waiting.put(request)

    # ---- the worker ----

    def _admit(self, rows: list[Request], state, logits, steps):
        """Prefill waiting requests into free rows (blocking when nothing runs)."""
        new = []
        while len(rows) + len(new) < self.max_batch:
            try:
                new.append(self.waiting.get(block=not rows and not new))
            except queue.Empty:
                break
        new = [r for r in new if not r.cancelled]
        if not new:
            return rows, state, logits, steps
        try:
            fresh, first, first_steps = self.engine.start(
                [r.prompt for r in new], [r.policy for r in new], [r.seed for r in new], max_len=self.context
            )
        except Exception as e:  # e.g. a budget no other row has: these requests fail, the batch goes on
            for r in new:
                r.emit(None, 0, f"error: {e}")
            return rows, state, logits, steps
        for r in new:
            r.gen = torch.Generator(device=self.engine.device).manual_seed(r.seed)
        state = fresh if state is None else DecodeState.cat([state, fresh])
        logits = first if logits is None else torch.cat([logits, first])
        steps = steps + first_steps.tolist()
        with self.lock:
            self.active += len(new)
        return rows + new, state, logits, steps

    def _ended(self, r: Request, token: int, length: int) -> str | None:
        if r.cancelled:
            return "cancelled"
        if token in self.stops:
            return "stop"
        if len(r.generated) >= r.max_tokens or length + 1 > self.context:
            return "length"
        return None

    def _loop(self):
        rows, state, logits, steps = [], None, None, []
        while True:
            try:
                rows, state, logits, steps = self._step(rows, state, logits, steps)
            except Exception as e:  # never a dead worker: the batch's requests end with the error, the next ones run
                for r in rows:
                    r.emit(None, 0, f"error: {e}")
                with self.lock:
                    self.active -= len(rows)
                rows, state, logits, steps = [], None, None, []

    def _step(self, rows, state, logits, steps):
        """Admit, sample one token per row, let ended rows leave, decode the rest."""
        rows, state, logits, steps = self._admit(rows, state, logits, steps)
        if not rows:
            return rows, state, logits, steps
        tokens = self.engine._sample(logits, [r.policy for r in rows], [r.gen for r in rows]).tolist()
        keep = []
        for i, r in enumerate(rows):
            token = r.forced.pop(0) if r.forced else tokens[i]
            tokens[i] = token
            if token not in self.stops and not r.cancelled:
                r.generated.append(token)
                r.emit(token, steps[i], None)
            if self.tool is not None and not r.forced:
                r.forced = self.tool.forced(r.generated)
            reason = self._ended(r, token, state.lengths[i])
            if reason:
                r.emit(None, steps[i] if token in self.stops else 0, reason)
            else:
                keep.append(i)
        if len(keep) < len(rows):
            with self.lock:
                self.active -= len(rows) - len(keep)
            rows = [rows[i] for i in keep]
            if not rows:
                return [], None, None, []
            state, tokens = state.select(keep), [tokens[i] for i in keep]
        state, logits, used = self.engine.decode(state, torch.tensor(tokens, device=self.engine.device))
        return rows, state, logits, used.tolist()
