"""`recurlm train`: stages of task (or text) training with recurrence sampling, truncated BPTT, a curriculum,
AdamW or Muon, bf16 autocast, atomic checkpoints with exact resume, and DDP under torchrun.

One linear loop; everything it needs from elsewhere is a function call (batches, r, checkpoints, evaluation).
"""

import json
import os
import signal
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recurlm.checkpoint import (
    TRAINING_WEIGHTS,
    build_tokenizer,
    load_checkpoint,
    load_training_weights,
    read_file,
    save_checkpoint,
)
from recurlm.config import InferencePolicy, RunConfig
from recurlm.errors import Interrupted, UserError
from recurlm.evaluation.scoring import evaluate
from recurlm.machine import cpu_has_bf16, keep_freed_memory
from recurlm.network.model import Supervision, build_model, set_attention
from recurlm.tasks.runs import stage_tasks
from recurlm.training.corpus import TextStream, sample_texts
from recurlm.training.data import TaskMixture
from recurlm.training.depth import progressive_weight, sample_progressive, sample_recurrences
from recurlm.training.optim import build_optimizers, group_lr, lr_factor

CKPT = "checkpoint"


def autocast_dtype(setting: str, device: torch.device, cpuinfo: str | None = None):
    """bf16 where the hardware has native bf16 matmuls (CUDA; CPUs with AMX or AVX512-BF16): measured 1.5x faster
    training for rrslm-addition on a 2-core AVX512-BF16 machine; fp32 elsewhere, where CPU bf16 is emulated."""
    if setting == "fp32" or (setting == "auto" and device.type == "cpu" and not cpu_has_bf16(cpuinfo)):
        return None
    return torch.bfloat16


def choose_attention(step, rounds: int = 3) -> dict[str, float]:
    """Runs `step` (a forward and backward of the model about to train, no optimiser step) with each CPU bf16
    attention kernel in turn, `rounds` times after a warm-up round, and keeps the faster for this process. Timed in
    the whole model because alone the kernels mislead: on a 2-core AMD EPYC the written-out form ran 1.4x faster
    than flash in isolation, yet made a step of a (2,4,2) model 10% slower, its fp32 scores competing with the rest
    of the step for the caches, while for the addition presets it was 8-23% faster. Returns the median seconds of
    each."""
    times = {"written_out": [], "flash": []}
    for i in range(rounds + 1):
        for name in times:
            set_attention(name == "written_out")
            t0 = time.perf_counter()
            step()
            if i:  # the first round warms the allocator
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    set_attention(min(medians, key=medians.get) == "written_out")
    return medians


def compile_blocks(model):
    """torch.compile each block and the loss, not the model: the recurrence loop stays eager, so a new r reuses the
    compiled blocks instead of recompiling (tested with dynamo's counters)."""
    for block in [*model.prelude, *model.core, *model.coda]:
        block.compile()
    model.loss = torch.compile(model.loss)


def format_time(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    """A tqdm bar on a terminal, plain lines in a log; metrics always go to metrics.jsonl (rank 0)."""

    def __init__(self, total: int, start: int, out: Path | None, enabled: bool):
        self.enabled, self.out = enabled, out
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def advance(self, step: int):
        """Every step moves the bar (the metrics line comes every log_every steps)."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, record: dict, line: str):
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=False)
            self.bar.update(record["step"] - self.bar.n)
        else:
            print(line, flush=True)

    def note(self, line: str):
        """A line above the bar (or in the log)."""
        if self.enabled:
            self.bar.write(line, file=sys.stderr) if self.bar is not None else print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_resumable(out: Path, configs: RunConfig) -> dict | None:
    """The saved trainer state if `out` holds a compatible run, None if it holds none; errors otherwise. Only what
    the weights mean (architecture and tokenizer) must match: schedules, stages and the inference policy may
    change between an interruption and its resumption."""
    ckpt = out / CKPT
    if not (ckpt / "trainer_state.json").is_file():
        return None
    _, _, saved = load_checkpoint(ckpt, device="meta")
    for section in ("model", "tokenizer"):
        old, new = saved.to_dict()[section], configs.to_dict()[section]
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise UserError(
                f"{out} holds a run with a different config ({section}.{k}: {old.get(k)!r} there, "
                f"{new[k]!r} here); use another --out"
            )
    return read_file(ckpt / "trainer_state.json", lambda p: json.loads(p.read_text()))


def train(configs: RunConfig, out_dir: str, resume: bool = False, stop_after: int | None = None):
    """Run (or resume) every stage; returns the model and the final trainer state. `stop_after` stops (with a
    checkpoint) after that many steps in this call, as an interruption would."""
    keep_freed_memory()  # large tensors freed at every step are reused rather than mapped afresh (machine.py)
    stages = list(configs.stages.items())
    if not stages:
        raise UserError("the config has no [stage.NAME] table: nothing to train on")
    for name, stage in stages:
        if not stage.tasks and not stage.text:
            raise UserError(f"stage {name} has no data: --set stage.{name}.text=CORPUS or stage.{name}.tasks=NAMES")
        for task in stage_tasks(stage):
            if not task.trainable:
                raise UserError(
                    f"stage {name}: task {task.name} scores a fixed benchmark and cannot generate training data; "
                    "evaluate on it with `recurlm eval --task` instead"
                )
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    # SIGTERM (a scheduler or `kill` ending the job) checkpoints as Ctrl-C does
    terminate = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if terminate is not None:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _train(configs, Path(out_dir), resume, stop_after, Ranks(rank, world, device, ddp))
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
        if ddp:
            dist.destroy_process_group()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@dataclass
class Ranks:
    """Where this process trains: its rank among `world` data-parallel ranks (1 without torchrun), its device."""

    rank: int
    world: int
    device: torch.device
    ddp: bool

    @property
    def master(self) -> bool:
        return self.rank == 0


def _train(configs: RunConfig, out: Path, resume: bool, stop_after: int | None, ranks: Ranks):
    mcfg, tcfg, rcfg, stages = configs.model, configs.train, configs.recurrence, list(configs.stages.items())
    rank, world, device, master, ddp = ranks.rank, ranks.world, ranks.device, ranks.master, ranks.ddp
    state = check_resumable(out, configs)
    if state is None and resume and out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} holds no checkpoint to resume: train without --resume, or choose another --out")
    if state is not None and resume and state["stage"] >= len(stages):
        if master:
            print(f"{out} holds a finished run ({state['step']} steps): nothing to train", file=sys.stderr)
        return load_checkpoint(out / CKPT, device)[0], state
    if state is not None and not resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if state is None and (out / "metrics.jsonl").exists():  # a run that never checkpointed: its log is kept
        raise UserError(f"{out} holds a run's metrics.jsonl but no checkpoint: choose another --out, or delete it")
    if master:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg.seed)
    data_seed = tcfg.seed if tcfg.data_seed < 0 else tcfg.data_seed
    if state is None:
        tok = build_tokenizer(configs, tokenizer_texts(stages, data_seed))
        model = build_model(mcfg, device)
        state = {"stage": 0, "stage_step": 0, "step": 0, "level": None, "tokens": 0, "elapsed": 0.0}
    else:
        model, tok, _ = load_checkpoint(out / CKPT, device)
        if master:
            print(f"resuming {out} from step {state['step']} (stage {stages[state['stage']][0]})", file=sys.stderr)
        if master:  # forget what was logged after the checkpoint: those steps run again
            lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= state["step"]]
            (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in kept))
        torch.set_rng_state(torch.tensor(bytearray.fromhex(state["torch_rng"]), dtype=torch.uint8))
    # under train.ema the checkpoint's model is the average (copied here as it was loaded) and the weights training
    # goes on from are the file beside it, which a resumed run goes on from whether or not it still averages
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tcfg.ema)) if tcfg.ema else None
    if state["step"] and (average is not None or (out / CKPT / TRAINING_WEIGHTS).is_file()):
        model.load_state_dict(load_training_weights(out / CKPT, device))
        if average is not None:
            average.n_averaged.fill_(state["step"])  # > 0: the next update averages instead of copying
    shipped = average.module if average is not None else model  # what validation runs and the checkpoint holds
    optimizers = build_optimizers(model, tcfg)
    if (out / CKPT / "optimizer.pt").is_file() and state["step"]:
        saved = read_file(out / CKPT / "optimizer.pt", lambda p: torch.load(p, map_location=device))
        if [len(o.param_groups) for o in optimizers] != [len(sd["param_groups"]) for sd in saved]:
            raise UserError(f"{out / CKPT / 'optimizer.pt'} was written by an older recurlm (other param groups)")
        for opt, sd in zip(optimizers, saved, strict=True):
            opt.load_state_dict(sd)
    if tcfg.compile:
        compile_blocks(model)
    # LoRA adapters of iterations not run this step get no gradient: DDP must be told to look for them
    net = DDP(model, find_unused_parameters=mcfg.recur_lora_rank > 0) if ddp else model
    amp = autocast_dtype(tcfg.dtype, device)
    total_steps = sum(s.steps for _, s in stages)
    if master:  # before the progress bar, which owns the terminal's last line from then on
        print(
            f"training {model.param_groups()['unique']:,} params on {device} ({world} rank{'s' * (world > 1)}, "
            f"{'bf16' if amp else 'fp32'}) for {total_steps} steps -> {out}",
            file=sys.stderr,
        )
    progress = Progress(total_steps, state["step"], out, master)
    # eager bf16 on the CPU: the attention kernel is chosen by timing both on the first batch (each rank its own: the
    # same mathematics), and kept in the run's state so that a resumed run computes as the uninterrupted one did
    chosen = state.get("attention") or (None if tcfg.attention == "auto" else tcfg.attention)
    set_attention(None if chosen is None else chosen == "written_out")
    calibrate = chosen is None and device.type == "cpu" and amp == torch.bfloat16 and not tcfg.compile

    def save():
        if master:
            state["torch_rng"] = torch.get_rng_state().numpy().tobytes().hex()
            optimizer_state = [o.state_dict() for o in optimizers]
            weights = model.state_dict() if average is not None else None
            save_checkpoint(out / CKPT, shipped, tok, configs, optimizer_state, dict(state), weights)

    steps_this_call, t_start, elapsed0 = 0, time.perf_counter(), state["elapsed"]
    try:
        while state["stage"] < len(stages):
            name, stage = stages[state["stage"]]
            mixture = TaskMixture(
                stage, tok, data_seed * 1000 + state["stage"], mcfg.abacus, mcfg.seq_len, mcfg.abacus_operands
            )
            if stage.text:
                stream = TextStream(stage.text, tok, stage.seq_len or mcfg.seq_len, rank, world)
                stream.skip(state["stage_step"] * tcfg.grad_accum * tcfg.batch_size)
            if state["level"] is None:
                state["level"] = 1 if stage.curriculum != "none" else None
            level = state["level"]
            while state["stage_step"] < stage.steps:
                if stop_after is not None and steps_this_call >= stop_after:
                    save()
                    return shipped, state
                s, step = state["stage_step"], state["step"]
                if stage.curriculum == "schedule":
                    level = state["level"] = min(mixture.max_level, 1 + s // stage.promote_every)
                factor = lr_factor(s, stage.steps, tcfg.warmup_steps, tcfg.warmdown_frac, tcfg.final_lr_frac)
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = group_lr(opt, group, tcfg) * stage.lr_scale * factor
                # the same r on every rank (a draw is a function of seed and step)
                r = (stage.recurrences or sample_recurrences(rcfg, tcfg.seed, step)) if mcfg.n_core else 1
                progressive = progressive_weight(rcfg, tcfg.seed, step)
                split = sample_progressive(tcfg.seed, step, r) if progressive else (0, 1)
                supervision = Supervision(
                    rcfg.supervise_every, rcfg.supervise_weight, progressive, split, rcfg.gate_beta,
                    stage.exit_gate, rcfg.gate_gamma,
                )  # fmt: skip
                t0 = time.perf_counter()
                loss_sum, n_tok = 0.0, 0
                for micro in range(tcfg.grad_accum):
                    if stage.text:
                        (x, y), digit_pos = stream.batch(tcfg.batch_size), None
                    else:
                        x, y, digit_pos = mixture.batch(tcfg.batch_size, step, rank, micro, level)
                    x, y = x.to(device), y.to(device)
                    digit_pos = digit_pos.to(device) if digit_pos is not None else None
                    if calibrate and micro == 0 and x.size(1) <= 256:
                        calibrate = False

                        def forward_backward():
                            with torch.autocast(device.type, dtype=amp):
                                model(x, r, digit_pos, rcfg.bptt_k, y, supervision).backward()  # noqa: B023
                            model.zero_grad(set_to_none=True)

                        times = choose_attention(forward_backward)
                        state["attention"] = min(times, key=times.get)
                        progress.note("bf16 attention: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items())
                                      + " a forward and backward; the faster is kept")  # fmt: skip
                    sync = nullcontext() if not ddp or micro == tcfg.grad_accum - 1 else net.no_sync()
                    with sync, torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        loss = net(x, r, digit_pos, rcfg.bptt_k, y, supervision)
                    (loss / tcfg.grad_accum).backward()
                    loss_sum += loss.item() / tcfg.grad_accum
                    n_tok += x.numel()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip or float("inf"))
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if average is not None:
                    average.update_parameters(model)
                dt = time.perf_counter() - t0
                state["stage_step"], state["step"] = s + 1, step + 1
                state["tokens"] += n_tok * world
                steps_this_call += 1
                progress.advance(state["step"])
                state["elapsed"] = elapsed0 + time.perf_counter() - t_start
                if state["step"] % tcfg.log_every == 0 or state["stage_step"] == stage.steps:
                    done_frac = state["step"] / total_steps
                    # this call's pace only: a resumed run's elapsed includes steps taken before
                    eta = (state["elapsed"] - elapsed0) / steps_this_call * (total_steps - state["step"])
                    tps = n_tok * world / dt
                    record = {
                        "step": state["step"],
                        "stage": name,
                        "loss": loss_sum,
                        "r": r,
                        "lr_factor": factor,
                        "lr": optimizers[-1].param_groups[0]["lr"],  # AdamW's, as set this step
                        "grad_norm": float(norm),
                        "tokens_per_s": tps,
                        "tokens": state["tokens"],
                        "level": level,
                        "elapsed": state["elapsed"],
                    }
                    progress.log(
                        record,
                        f"step {state['step']}/{total_steps} ({done_frac:.0%}) | {name} | "
                        f"loss {loss_sum:.4f} | r {r} | {tps:,.0f} tok/s"
                        + (f" | level {level}" if level else "")
                        + f" | eta {format_time(eta)}",
                    )
                at_end = state["stage_step"] == stage.steps
                if (tcfg.eval_every and state["step"] % tcfg.eval_every == 0) or at_end:
                    level = state["level"] = periodic_eval(shipped, tok, configs, mixture, name, level, state, progress)
                if state["step"] % tcfg.ckpt_every == 0:
                    save()
            state["stage"] += 1
            state["stage_step"], state["level"] = 0, None
        save()
    except KeyboardInterrupt:
        save()
        raise Interrupted(f"interrupted at step {state['step']}: checkpoint saved; continue with --resume") from None
    finally:
        progress.close()
    return shipped, state


def tokenizer_texts(stages, seed: int, n_per_task: int = 2000) -> list[str]:
    """What a BPE tokenizer is trained on: training-split examples of every stage's tasks (and text corpora)."""
    texts = []
    for _, stage in stages:
        if stage.text:
            texts += sample_texts(stage.text)
        for task in stage_tasks(stage, training=True):  # in the wordings training asks
            texts += [ex.prompt + ex.target for ex in task.generate("train", n_per_task, seed=seed)]
    return texts


def validation_policy(configs: RunConfig) -> InferencePolicy:
    """How periodic validation (and the curriculum it drives) runs the model: greedy at the inference policy's r,
    cache budget and warm start, without adaptive exit, which would make validation cost and accuracy depend on a
    threshold chosen for deployment."""
    run = configs.inference
    return InferencePolicy(recurrences=run.recurrences, kv_budget=run.kv_budget, warm_start=run.warm_start)


@torch.compiler.set_stance("force_eager")
def periodic_eval(model, tok, configs, mixture: TaskMixture, name, level, state, progress) -> int | None:
    """Validation accuracy per task and difficulty, logged; and the curriculum level.

    Promotion asks whether the current level is mastered on fresh *training-split* problems: a level can be too
    small to generalise from on its own (1-digit addition has 100 problems; the 20 held out are only learnt through
    the columns of longer sums), so requiring held-out accuracy there would stall the curriculum.

    Generation runs the blocks eagerly even under `train.compile`: decoding's cache writes would recompile the
    compiled blocks per cache slot until dynamo's recompile limit, and then leave them eager for good.
    """
    tcfg, policy, stage = configs.train, validation_policy(configs), mixture.stage
    if not mixture.tasks:
        return level
    record = {"step": state["step"], "stage": name, "eval": {}}
    mastered = True
    for task in mixture.tasks:
        for d in task.difficulties:
            if level is not None and d > level:
                continue
            examples = task.generate("val", tcfg.eval_n, seed=0, difficulty=d)
            if not examples:  # a level too small to hold validation problems (even_odd's ten 1-digit numbers)
                continue
            res = evaluate(model, tok, examples, policy, task.max_new_tokens, task.score)
            record["eval"][f"{task.name}/{d}"] = res["accuracy"]
            if d == level and stage.curriculum == "accuracy":
                fresh = task.generate("train", tcfg.eval_n, seed=state["step"], difficulty=d)
                acc = evaluate(model, tok, fresh, policy, task.max_new_tokens, task.score)["accuracy"]
                record["train_accuracy_at_level"] = acc
                mastered &= acc >= stage.promote_at
    line = "eval (val) " + " ".join(f"{k} {v:.3f}" for k, v in record["eval"].items())
    progress.log(record, line)
    if stage.curriculum == "accuracy" and level is not None and mastered and level < mixture.max_level:
        return level + 1
    return level
