"""Which tasks a run trained on, and with which options: how any later command (eval, chat, serve, export) asks
a checkpoint the questions it learned, in the form it learned them."""

from recurlm.config import RunConfig, StageConfig
from recurlm.errors import UserError
from recurlm.tasks import Task, get_task
from recurlm.tasks.reasoning import SUITE
from recurlm.tasks.wording import SHARES


def task_weights(stage: StageConfig) -> dict[str, float]:
    """`tasks = "arithmetic:2,even_odd:0.5,sorting"`: each task's share of the mixture (1 when not given). A suffix
    that is not a number is part of the name (`mmlu:FILE`, `reasoning_gym:NAME`)."""
    weights = {}
    for entry in filter(None, (e.strip() for e in stage.tasks.split(","))):
        name, _, suffix = entry.rpartition(":")
        try:
            weight = float(suffix)
        except ValueError:
            name, weight = entry, 1.0
        if not weight > 0:
            raise UserError(f"task weight in {entry!r} must be positive")
        weights[name.strip()] = weight
    return weights


def stage_tasks(stage: StageConfig, training: bool = False) -> list[Task]:
    """The stage's tasks, built with the stage's task options (those that only shape training data when
    `training`: evaluation keeps the task's own definition)."""
    options = {"addition": dict(max_digits=stage.max_difficulty, reverse=stage.reverse_answer)}
    if training:
        options["addition"] |= {name: getattr(stage, name) for name in ("mixed_lengths", "mixed_share", "mixed_short")}
        wording = {name: getattr(stage, name) for name in ("wording", *SHARES)}
        options |= dict.fromkeys(SUITE, wording)
        wide = [name.strip() for name in stage.wide_tasks.split(",") if name.strip()]
        if unknown := sorted(set(wide) - set(SUITE)):
            raise UserError(f"stage wide_tasks must name tasks of the reasoning suite ({', '.join(SUITE)}): {unknown}")
        options |= {name: wording | {"wording": "wide"} for name in wide}
        options["pattern"] = options["pattern"] | dict(
            geometric_starts=stage.geometric_starts, check_step=stage.check_step
        )
        options["arithmetic"] = options["arithmetic"] | {"count_down": stage.count_down}
    return [get_task(name, **options.get(name, {})) for name in task_weights(stage)]


def task_from_configs(name: str, configs: RunConfig) -> Task:
    """A task as the run trained it (the options of the first stage that lists it), or with its defaults."""
    for stage in configs.stages.values():
        for task in stage_tasks(stage):
            if task.name == name:
                return task
    return get_task(name)


def trained_task_names(configs: RunConfig) -> list[str]:
    """The tasks the run's stages trained on, in order, once each."""
    return list(dict.fromkeys(t.name for s in configs.stages.values() for t in stage_tasks(s)))
