"""`recurlm compare`: a recursive run against plain GPTs trained on the same data for the same number of tokens.

Two baselines answer the two fair questions: with the same unique parameters (P + R + C layers), does reusing the
core buy accuracy? With the same compute per token (P + R·r̄ + C layers, r̄ the training mean), does the recursive
model lose to a deeper plain one? Baselines are trained from the run's own configs (same stages, steps, batch
and seed; only the model changes) into RUN_DIR/baselines/, or given with --baseline.
"""

import dataclasses
import json
from pathlib import Path

from recurlm.analysis.report import markdown_table, scaling_table
from recurlm.checkpoint import load_checkpoint, resolve
from recurlm.config import RecurrenceConfig, RunConfig
from recurlm.errors import UserError
from recurlm.evaluation.scoring import sweep, task_sets
from recurlm.tasks.runs import trained_task_names


def plain_configs(configs: RunConfig, layers: int) -> RunConfig:
    """The run's configs with its model replaced by a plain GPT of `layers` blocks of the same width; stages that
    train only the exit gate are left out (a plain GPT has no steps to exit)."""
    model = dataclasses.replace(
        configs.model, n_prelude=layers, n_core=0, n_coda=0, recur_lora_rank=0, recur_lora_count=0, gate=False,
        exit_gate=False,
    )  # fmt: skip
    return configs.replace(
        model=model,
        recurrence=RecurrenceConfig(schedule="fixed", mean=1.0),
        inference=configs.inference.override(recurrences=1, exit="none"),
        stages={name: stage for name, stage in configs.stages.items() if stage.exit_gate != "only"},
    )


def baseline_layers(configs: dict) -> dict[str, int]:
    cfg, mean = configs.model, configs.recurrence.mean
    iso_params = cfg.n_prelude + cfg.n_core + cfg.n_coda
    iso_flops = cfg.n_prelude + round(cfg.n_core * mean) + cfg.n_coda
    return {f"plain {iso_params}L (iso-params)": iso_params, f"plain {iso_flops}L (iso-FLOPs)": iso_flops}


def train_baselines(run_dir: Path, configs: dict) -> dict[str, Path]:
    from recurlm.training.trainer import train

    out = {}
    for label, layers in baseline_layers(configs).items():
        path = run_dir / "baselines" / f"plain-{layers}L"
        if path not in out.values():
            train(plain_configs(configs, layers), path, resume=True)  # resumes, or returns at once when done
        out[label] = path
    return out


def trained_tokens(run_dir) -> int | None:
    state = resolve(run_dir) / "trainer_state.json"
    return json.loads(state.read_text())["tokens"] if state.is_file() else None


def compare(
    run_dir: str,
    baselines: list[str] = (),
    tasks: list[str] | None = None,
    recurrences: list[int] = (2, 4, 8, 16),
    limit: int = 200,
    batch_size: int = 128,
) -> str:
    """The scaling table (rows: tasks and the aggregate; columns: baselines, then r) and a cost table, as
    markdown."""
    model, tok, configs = load_checkpoint(run_dir)
    if not model.core:
        raise UserError(f"{run_dir} is a plain GPT: compare a recursive run against baselines")
    names = tasks or trained_task_names(configs)
    if not names:
        raise UserError(f"{run_dir} trained on text only: name the tasks to compare on with --task")
    sets = task_sets(names, configs, "test", limit)
    plain = configs.inference.override(exit="none")
    if baselines:
        others = {f"{Path(b).name} (baseline)": Path(b) for b in baselines}
    else:
        others = train_baselines(Path(run_dir), configs)
    columns, costs = {}, []
    for label, path in others.items():
        base, base_tok, _ = load_checkpoint(path)
        if base_tok.vocab_size != tok.vocab_size:
            raise UserError(f"{path} has another tokenizer than {run_dir}: baselines must share the run's data")
        columns[label] = list(sweep(base, base_tok, sets, plain, [1], batch_size=batch_size))
        costs.append([label, *cost(base, 1), trained_tokens(path)])
    for row in sweep(model, tok, sets, plain, list(recurrences), batch_size=batch_size):
        columns.setdefault(f"r={row['recurrences']}", []).append(row)
    for r in recurrences:
        costs.append([f"r={r}", *cost(model, r), trained_tokens(run_dir)])
    header = ["model", "unique params", "depth", "FLOPs/token", "trained tokens"]
    return scaling_table(columns) + "\n\n" + markdown_table(header, costs) + "\n"


def cost(model, r: int) -> list[int]:
    return [model.param_groups()["unique"], model.effective_depth(r), model.flops_per_token(r)]
