"""Continuous batching: one worker thread owns the model and drives the one generation loop
(`recurlm.inference.generation`) over every running request. This module only admits, queues and evicts: a request
joins the loop at the next step and leaves it when it ends, so each keeps its own r, exit, sampling, seed and stop
conditions, and its tokens are those it would get alone.

Every request ends exactly once, whatever happens (`_end`): that is what keeps the count of requests in flight,
and with it the 429 answer, true. A request that cannot join ends alone with its error; only a failure of a whole
decoding step (a defect) ends the requests of that step.
"""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from recurlm.inference.engine import Engine
from recurlm.inference.generation import GenerationLoop, Sequence
from recurlm.text.calculator import Calculator
from recurlm.text.tokenizer import Tokenizer

SHUTDOWN = "error: the server is shutting down"


class Busy(Exception):
    """The batch and the queue are full."""


@dataclass(eq=False)
class Job(Sequence):
    """A request: a sequence to generate and where its tokens go. `emit(token, steps, None)` for each token the
    client sees, then `emit(None, steps, reason)` once at the end (reason: 'stop', 'length', 'context',
    'cancelled' or 'error: ...'; steps: the stop token's pass, if it ended on one)."""

    emit: Callable[[int | None, int, str | None], None] | None = None
    ended: bool = False


class Batcher:
    def __init__(self, model, tok: Tokenizer, max_batch: int = 64, max_queue: int = 256):
        self.engine, self.stops = Engine(model, tok.digit_ids), set(tok.stop_ids)
        self.tool = Calculator.for_tokenizer(tok)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.in_flight = 0  # submitted and not yet ended: what the queue bound counts
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.loop = self._new_loop()
        self.worker = threading.Thread(target=self._run, name="recurlm-batcher", daemon=True)
        self.worker.start()

    @property
    def active(self) -> int:
        """Requests in the batch (read by tests and /health)."""
        return len(self.loop)

    def _new_loop(self) -> GenerationLoop:
        return GenerationLoop(self.engine, self.stops, self.tool)

    def submit(self, job: Job):
        with self.lock:
            if self.closing.is_set():
                raise Busy
            if self.in_flight >= self.max_batch + self.max_queue:
                raise Busy
            self.in_flight += 1
        self.waiting.put(job)

    def close(self):
        """Stop taking requests and end every one in flight (at the next step): the server is going down."""
        self.closing.set()
        self.waiting.put(None)  # wakes a worker waiting for work

    def _end(self, job: Job, reason: str, steps: int = 0):
        if job.ended:
            return
        job.ended = True
        with self.lock:
            self.in_flight -= 1
        job.emit(None, steps, reason)

    # ---- the worker ----

    def _run(self):
        while not (self.closing.is_set() and not self.in_flight):
            try:
                self._step()
            except Exception as e:  # a defect in a decoding step: its requests end with the error, the next ones run
                for job in self.loop.sequences:
                    self._end(job, f"error: {e}")
                self.loop = self._new_loop()

    def _admit(self):
        """Waiting requests into free rows (blocking while nothing runs)."""
        new = []
        while len(self.loop) + len(new) < self.max_batch:
            try:
                job = self.waiting.get(block=not len(self.loop) and not new, timeout=0.5)
            except queue.Empty:
                break
            if job is not None:
                new.append(job)
        for job in new:
            if job.cancelled or self.closing.is_set():
                self._end(job, "cancelled" if job.cancelled else SHUTDOWN)
        new = [job for job in new if not job.ended]
        try:
            self.loop.add(new)
        except Exception:  # one of them cannot start (or cannot join this batch): each tries alone
            for job in new:
                try:
                    self.loop.add([job])
                except Exception as e:
                    self._end(job, f"error: {e}")

    def _step(self):
        self._admit()
        if self.closing.is_set():
            for job in self.loop.sequences:
                job.cancelled = True
        for event in self.loop.step():
            job = event.seq
            if event.token is not None and event.token not in self.stops:
                job.emit(event.token, event.steps, None)
            if event.finish == "cancelled" and self.closing.is_set():
                self._end(job, SHUTDOWN)
            elif event.finish:
                self._end(job, event.finish, event.steps if event.token in self.stops else 0)
