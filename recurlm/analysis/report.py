"""`recurlm report`: what a run's evaluations say, as report.md and PNG plots.

Does thinking longer help (accuracy against r), how many steps adaptive exit spends by difficulty, what the exit
thresholds buy against their compute, what each setting costs (parameters and FLOPs per token), and how training
went (metrics.jsonl). Evaluation results come from the run's `eval*.json` files (written by `recurlm eval --json`);
a run without any is evaluated here once, on its own training tasks, and the result saved as its eval.json.
"""

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state and no display backend, files only
from matplotlib.ticker import MaxNLocator

from recurlm.checkpoint import load_checkpoint
from recurlm.config import EXIT_CRITERIA
from recurlm.errors import UserError
from recurlm.evaluation.dynamics import default_depths, settle_or_drift
from recurlm.evaluation.metrics import (
    aggregate,
    by_task,
    centred_mean,
    chance,
    chatcore,
    in_chatcore,
    pooled,
    standard_error,
)
from recurlm.evaluation.scoring import sweep, task_sets
from recurlm.tasks.runs import trained_task_names

DEFAULT_EXITS = ["latent:0.3", "latent:0.1", "latent:0.03", "kl:0.01", "kl:0.001"]
CRITERION_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
EXIT_KEYS = ("exit", "recurrences", "accuracy", "mean_steps", "max_steps", "n")  # the adaptive-exit table's columns


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def row_label(row: dict) -> str:
    return row["task"] + (f" (difficulty {row['difficulty']})" if row["difficulty"] is not None else "")


def scaling_table(columns: dict[str, list[dict]]) -> str:
    """Accuracy with tasks (and difficulties) as rows and one column per setting (e.g. 'r=4': its result rows),
    plus the aggregates: the mean task accuracy and its standard error (and, when some task can be guessed, that mean
    centred on chance: ChatCORE's rule over every task) unless all tasks are ChatCORE's, and ChatCORE over those of
    its tasks present."""
    labels = list(dict.fromkeys(row_label(r) for rows in columns.values() for r in rows))
    cells = {name: {row_label(r): r["accuracy"] for r in rows} for name, rows in columns.items()}
    table = [[label] + [cells[name].get(label) for name in columns] for label in labels]
    accuracy = [aggregate(rows) for rows in columns.values()]
    if not all(in_chatcore(t) for a in accuracy for t in a):
        table.append(["mean over tasks"] + [sum(a.values()) / len(a) if a else None for a in accuracy])
        table.append(["± standard error of the mean"] + [standard_error(rows) for rows in columns.values()])
        if any(chance(t) for a in accuracy for t in a):
            table.append(["mean over tasks, centred on chance"] + [centred_mean(a) for a in accuracy])
    core = [chatcore(a) for a in accuracy]
    if any(v is not None for v in core):
        table.append(["ChatCORE"] + core)
    return markdown_table(["task"] + list(columns), table)


def per_task(rows: list[dict]) -> list[dict]:
    """Rows of one setting pooled over difficulties: one row per task."""
    tasks = by_task(rows)
    totals = {t: sum(r["n"] for r in task_rows) for t, task_rows in tasks.items()}
    return [
        {"task": t, "difficulty": None, "accuracy": pooled(tasks[t], "accuracy"), "n": n}
        for t, n in totals.items()
        if n
    ]


def side_by_side(runs: list["Run"]) -> dict[str, list[dict]]:
    """Every run's fixed-r settings as columns ('run r=4'; a plain run's one depth as 'run'), tasks pooled."""
    columns = {}
    for run in runs:
        for name, rows in by_r(run.fixed()).items():
            columns[f"{run.name} {name}" if run.model.core else run.name] = per_task(rows)
    return columns


def by_r(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["recurrences"]):
        out.setdefault(f"r={row['recurrences']}", []).append(row)
    return out


class Run:
    """A run directory: its configs, model (on 'meta': counting only), training metrics and evaluation rows."""

    def __init__(self, path: str):
        self.path, self.name = Path(path), Path(path).resolve().name
        self.model, _, self.configs = load_checkpoint(path, device="meta")
        metrics = self.path / "metrics.jsonl"
        self.metrics = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
        self.results: list[dict] = []
        self.dynamics: list[dict] = []

    def fixed(self) -> list[dict]:
        """Greedy rows without adaptive exit: the test-time-scaling curve."""
        return [r for r in self.results if r["exit"] == "none" and r["decode"] == "greedy"]

    def adaptive(self) -> list[dict]:
        return [r for r in self.results if r["exit"] != "none" and r["decode"] == "greedy"]


def load_results(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The result rows and the settle-or-drift rows (`recurlm eval --dynamics`) of the run's eval*.json files on the
    test split (a file written with `--split val` or `train` is left out: a report reports test); keys a result
    row leaves out (docs/design.md §4) get `recurlm eval` defaults."""
    rows, dynamics = [], []
    for f in sorted(run_dir.glob("eval*.json")):
        try:
            saved = json.loads(f.read_text())
            if saved.get("split", "test") != "test":
                continue
            for row in saved["results"]:
                rows.append({"difficulty": None, "exit": "none", "decode": "greedy", **row})
                rows[-1]["max_steps"] = rows[-1].get("max_steps", rows[-1]["mean_steps"])
            dynamics += saved.get("dynamics", [])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{f} is not a `recurlm eval --json` file") from None
    return rows, dynamics


def evaluate_run(
    run_dir: Path, recurrences: list[int] | None, exits: list[str], limit: int
) -> tuple[list[dict], list[dict]]:
    """The run's own training tasks on the test split: every r without exit (by default up to 4x the run's r), each
    exit threshold capped at the largest r, and the recurrence's settle-or-drift trace to that r."""
    model, tok, configs = load_checkpoint(run_dir)
    names = trained_task_names(configs)
    if not names:
        raise UserError(f"{run_dir} trained on text only: evaluate it with `recurlm eval --task ...` first")
    sets = task_sets(names, configs, "test", limit)
    policy = configs.inference
    recurrences = list(recurrences or default_depths(policy.recurrences))
    rows = list(sweep(model, tok, sets, policy, recurrences if model.core else [1], ["none"]))
    dynamics = []
    if model.core:
        rows += sweep(model, tok, sets, policy.override(max_steps=0), [max(recurrences)], exits)
        dynamics = settle_or_drift(model, tok, sets, max(recurrences))
    saved = {"checkpoint": str(run_dir), "results": rows, "dynamics": dynamics}
    (run_dir / "eval.json").write_text(json.dumps(saved, indent=1))
    return rows, dynamics


MARKERS = "os^Dvx<>P*"
ACCURACY = (0, 1.02)  # accuracies from 0: a point at 0 or 1 stays visible (markers are not clipped)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def spread(x: list, k: int, n: int, log: bool = False) -> list:
    """x shifted a little for the k-th of n lines, so that lines with equal values stay visible side by side."""
    gaps = np.diff(sorted(set(x))) if not log and len(set(x)) > 1 else [1.0]
    shift = (k - (n - 1) / 2) * 0.05 * float(min(gaps))  # a twentieth of the closest points' distance per line
    return [v * 2**shift if log else v + shift for v in x]


def line(ax, x, y, k: int, n: int, log: bool = False, **kw):
    ax.plot(spread(list(x), k, n, log), list(y), marker=MARKERS[k % len(MARKERS)], clip_on=False, **kw)


def legend_outside(fig: Figure, axes: list):
    """One legend for the figure, to the right of the data, however many lines (13 tasks, several runs) it lists."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        ncol = 1 + (len(entries) - 1) // 18
        fig.legend(entries.values(), entries.keys(), loc="outside right upper", fontsize=7, ncol=ncol, frameon=False)


def integer_ticks(ax, axis: str = "x"):
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def r_axis(ax, rs: list[int]):
    ax.set_xscale("log", base=2)
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.minorticks_off()


def draw_against_r(ax, run: Run, pts: list[tuple], color: str, k: int = 0, n: int = 1):
    """A looped run's (r, value) points as a line; a plain GPT has one depth: a dashed level across the r axis."""
    if pts and run.model.core:
        line(ax, *zip(*pts, strict=True), k, n, log=True, color=color, label=run.name)
    elif pts:
        ax.axhline(pts[0][1], linestyle="--", color=color, label=f"{run.name} (plain)")


def plot_aggregate_vs_r(runs: list[Run], path: Path) -> Figure:
    """The task mean centred on chance (ChatCORE's rule) against r: a line per looped run, a level per plain run."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    for i, run in enumerate(runs):
        pts = [(rows[0]["recurrences"], centred_mean(aggregate(rows))) for rows in by_r(run.fixed()).values()]
        draw_against_r(ax, run, pts, f"C{i}", i, len(runs))
    r_axis(ax, sorted({r["recurrences"] for run in runs if run.model.core for r in run.fixed()}))
    ax.set(xlabel="recurrences r", ylabel="aggregate (centred on chance)", title="all tasks", ylim=(0, 1.02))
    legend_outside(fig, [ax])
    return save(fig, path)


def panels(n: int, width: float, height: float) -> tuple[Figure, list]:
    """A figure of n panels, wrapped four to a row so that many tasks stay readable."""
    ncols = min(n, 4)
    fig = new_figure(width * ncols + 2, height * -(-n // ncols))
    axes = fig.subplots(-(-n // ncols), ncols, squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, list(axes[:n])


def plot_accuracy_vs_r(runs: list[Run], path: Path) -> Figure:
    tasks = list(dict.fromkeys(row_label(r) for run in runs for r in run.fixed()))
    fig, axes = panels(len(tasks), 4, 3.5)
    rs = sorted({r["recurrences"] for run in runs for r in run.fixed()})
    for ax, task in zip(axes, tasks, strict=True):
        for i, run in enumerate(runs):
            pts = sorted((r["recurrences"], r["accuracy"]) for r in run.fixed() if row_label(r) == task)
            draw_against_r(ax, run, pts, f"C{i}", i, len(runs))
        ax.set(title=task, xlabel="recurrences r", ylabel="accuracy", ylim=ACCURACY)
        r_axis(ax, rs)
    legend_outside(fig, axes)
    return save(fig, path)


def plot_accuracy_vs_difficulty(runs: list[Run], path: Path) -> Figure:
    """Per task, accuracy against difficulty (addition: operand digits), one line per run and r (plain runs
    dashed): where a model stops generalising, and whether more r moves that point."""
    levels: dict[str, set] = {}
    for run in runs:
        for r in run.fixed():
            if r["difficulty"] is not None:
                levels.setdefault(r["task"], set()).add(r["difficulty"])
    tasks = [t for t, seen in levels.items() if len(seen) > 1]  # one level: nothing to draw against difficulty
    fig, axes = panels(max(len(tasks), 1), 4, 3.5)
    for ax, task in zip(axes, tasks, strict=False):  # no task with levels: one empty panel
        series = {}
        for run in runs:
            for r in run.fixed():
                if r["task"] == task and r["difficulty"] is not None:
                    series.setdefault((run, r["recurrences"]), []).append((r["difficulty"], r["accuracy"]))
        for k, ((run, rec), pts) in enumerate(series.items()):
            label, style = (f"{run.name} (plain)", "--") if not run.model.core else (f"{run.name}, r={rec}", "-")
            line(ax, *zip(*sorted(pts), strict=True), k, len(series), linestyle=style, label=label)
        ax.set(title=Path(task).name, xlabel="difficulty", ylabel="accuracy", ylim=ACCURACY)
        integer_ticks(ax)
    legend_outside(fig, axes)
    return save(fig, path)


def plot_steps_vs_difficulty(runs: list[Run], path: Path) -> Figure:
    """Per task with difficulty levels, the steps adaptive exit spends against difficulty, a line per run and exit
    setting (median problem, 10-90% band): does it spend depth where problems are harder?"""
    tasks: dict[str, dict[tuple, list]] = {}
    for run in runs:
        for r in run.adaptive():
            if r["difficulty"] is not None:
                tasks.setdefault(r["task"], {}).setdefault((run.name, r["exit"], r["recurrences"]), []).append(r)
    tasks = {t: series for t, series in tasks.items() if len({r["difficulty"] for v in series.values() for r in v}) > 1}
    fig, axes = panels(max(len(tasks), 1), 4, 3.5)
    for ax, (task, series) in zip(axes, tasks.items(), strict=False):
        for k, ((name, spec, cap), rows) in enumerate(series.items()):
            rows.sort(key=lambda r: r["difficulty"])
            # per problem: its mean recurrences per decoded token; the median and the 10-90% band over problems
            bands = [np.percentile(r.get("steps_by_example") or [r["mean_steps"]], [10, 50, 90]) for r in rows]
            p10, p50, p90 = np.array(bands).T
            x = spread([r["difficulty"] for r in rows], k, len(series))
            ax.errorbar(x, p50, yerr=[p50 - p10, p90 - p50], marker=MARKERS[k % len(MARKERS)], capsize=3,
                        color=f"C{k}", label=f"{name}: {spec} (max {cap})", clip_on=False)  # fmt: skip
        ax.set(title=Path(task).name, xlabel="difficulty", ylabel="steps per token (median problem, 10-90%)")
        ax.set_ylim(bottom=0)
        integer_ticks(ax)
    legend_outside(fig, axes)
    return save(fig, path)


def plot_exit_tradeoff(runs: list[Run], path: Path) -> Figure:
    """Accuracy against mean recurrences per token: fixed r as a line, each exit threshold as a labelled point."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    for run in runs:
        fixed = sorted((pooled(rows, "mean_steps"), pooled(rows, "accuracy")) for rows in by_r(run.fixed()).values())
        if fixed and not run.model.core:  # a plain GPT has no recurrences to count: its accuracy as a level
            ax.axhline(fixed[0][1], linestyle="--", color="grey", label=f"{run.name} (plain)")
        elif fixed:
            ax.plot(*zip(*fixed, strict=True), marker="o", label=f"{run.name}: fixed r", clip_on=False)
        settings: dict[tuple, list] = {}
        for r in run.adaptive():
            settings.setdefault((r["exit"], r["recurrences"]), []).append(r)
        seen: dict[str, int] = {}
        for (spec, cap), rows in settings.items():  # a colour per criterion, a marker per threshold of it
            name = spec.partition(":")[0]
            nth = seen[name] = seen.get(name, -1) + 1
            color = CRITERION_COLORS[EXIT_CRITERIA.index(name) % len(CRITERION_COLORS)]
            point = [pooled(rows, "mean_steps")], [pooled(rows, "accuracy")]
            label = f"{run.name}: {spec}, r ≤ {cap}"
            marker = "xo+sd^v"[(EXIT_CRITERIA.index(name) + nth) % 7]
            ax.scatter(*point, color=color, marker=marker, label=label, clip_on=False)
    ax.set(xlabel="recurrences per token (mean)", ylabel="accuracy (all tasks)", title="accuracy / compute")
    ax.set(ylim=zoomed(ax), xlim=(0, None))
    legend_outside(fig, [ax])
    return save(fig, path)


def zoomed(ax) -> tuple[float, float]:
    """The accuracy axis around what is drawn: exits and fixed r often differ by a point, invisible on 0 to 1."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    ys += [y for points in ax.collections for y in points.get_offsets()[:, 1]]
    if not ys:
        return ACCURACY
    pad = max(0.02, 0.15 * (max(ys) - min(ys)))
    return max(ACCURACY[0], min(ys) - pad), min(ACCURACY[1], max(ys) + pad)


def plot_settle_or_drift(runs: list[Run], path: Path) -> Figure:
    """Per iteration of the prompt pass: how much the state and the next-token distribution still move, one line per
    task, the run's trained r marked: falling lines settle, flat or rising ones drift."""
    fig = new_figure(12, 4)
    axes = fig.subplots(1, 2)
    keys = (("state_change", "relative state change"), ("distribution_change", "KL of next-token distribution"))
    lines = [(run, task, rows) for run in runs for task, rows in by_task(run.dynamics).items()]
    for ax, (key, title) in zip(axes, keys, strict=True):
        for k, (run, task, rows) in enumerate(lines):
            label = task if len(runs) == 1 else f"{run.name}: {task}"
            ys = [max(r[key], 1e-9) for r in rows]
            ax.plot([r["iteration"] for r in rows], ys, marker=MARKERS[k % len(MARKERS)], markersize=3, label=label)
        for run in runs:
            ax.axvline(run.configs.inference.recurrences, color="grey", linestyle=":")
        ax.set(xlabel="iteration (dotted: the run's r)", yscale="log", title=title)
        integer_ticks(ax)
    legend_outside(fig, list(axes))
    return save(fig, path)


def plot_training(runs: list[Run], path: Path) -> Figure:
    fig = new_figure(12, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for run in runs:
        steps = [m for m in run.metrics if "loss" in m]
        if steps:
            loss_ax.plot([m["tokens"] for m in steps], [m["loss"] for m in steps], label=run.name)
    # a line per evaluated set while they stay readable (16), else a line per run: the mean over its sets
    evals = {run: [m for m in run.metrics if "eval" in m] for run in runs}
    per_set = sum(len({k for m in ms for k in m["eval"]}) for ms in evals.values()) <= 16
    for run, ms in evals.items():
        keys = list(dict.fromkeys(k for m in ms for k in m["eval"]))
        if not per_set and keys:
            mean = [(m["step"], sum(m["eval"].values()) / len(m["eval"])) for m in ms]
            label = f"{run.name}: mean of {len(keys)} sets"
            acc_ax.plot(*zip(*mean, strict=True), marker="o", markersize=4, label=label)
            continue
        for k, key in enumerate(keys):
            pts = [(m["step"], m["eval"][key]) for m in ms if key in m["eval"]]
            acc_ax.plot(
                *zip(*pts, strict=True), marker=MARKERS[k % len(MARKERS)], markersize=4, label=f"{run.name}: {key}"
            )
    loss_ax.set(xlabel="tokens", ylabel="training loss", yscale="log", title="training loss")
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=ACCURACY, title="periodic evaluation (val split)")
    if len(runs) > 1:
        loss_ax.legend(fontsize=7)  # a line per run; the evaluations' many lines get the legend outside
    legend_outside(fig, [acc_ax])
    return save(fig, path)


def save(fig: Figure, path: Path) -> Figure:
    fig.savefig(path, dpi=100)
    return fig


def cost_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        m = run.model
        evaluated = sorted({row["recurrences"] for row in run.results}) or [run.configs.inference.recurrences]
        for r in evaluated if m.core else [1]:  # a plain GPT has one depth whatever r says
            row = [run.name, m.param_groups()["unique"], r, m.effective_depth(r)]
            rows.append(row + [m.params_per_token(r), m.flops_per_token(r)])
    return markdown_table(["run", "unique params", "r", "depth", "params/token", "FLOPs/token"], rows)


def write_report(
    run_dirs: list[str],
    out: str | None = None,
    recurrences: list[int] | None = None,
    exits: list[str] = DEFAULT_EXITS,
    limit: int = 100,
) -> Path:
    runs = [Run(d) for d in run_dirs]
    for run in runs:
        run.results, run.dynamics = load_results(run.path)
        if not run.results:
            run.results, run.dynamics = evaluate_run(run.path, recurrences, list(exits), limit)
    out_dir = Path(out) if out else runs[0].path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# recurlm report: {', '.join(r.name for r in runs)}", ""]
    plots = {}
    if any(run.fixed() for run in runs):
        md += ["## Does thinking longer help?", "", "Accuracy on held-out problems (greedy, no adaptive exit).", ""]
        md += [f"### {run.name}\n\n{scaling_table(by_r(run.fixed()))}\n" for run in runs if run.fixed()]
        if sum(bool(run.fixed()) for run in runs) > 1:
            md += ["### Side by side, tasks pooled over difficulties", "", scaling_table(side_by_side(runs)), ""]
            plots["aggregate_vs_r.png"] = plot_aggregate_vs_r
        plots["accuracy_vs_r.png"] = plot_accuracy_vs_r
        levels = {(r["task"], r["difficulty"]) for run in runs for r in run.fixed() if r["difficulty"] is not None}
        if len(levels) > len({task for task, _ in levels}):  # some task at several difficulties
            plots["accuracy_vs_difficulty.png"] = plot_accuracy_vs_difficulty
    if any(run.adaptive() for run in runs):
        md += ["## Adaptive exit", "", "Steps are recurrences per generated token; 'max r' is the cap.", ""]
        header = ["task", "exit", "max r", "accuracy", "steps", "max", "n"]
        for run in runs:
            rows = [[row_label(r)] + [r[k] for k in EXIT_KEYS] for r in run.adaptive()]
            md += [f"### {run.name}\n\n{markdown_table(header, rows)}\n"]
        if any(r["difficulty"] is not None for run in runs for r in run.adaptive()):  # a --data file has none
            plots["steps_vs_difficulty.png"] = plot_steps_vs_difficulty
        plots["exit_tradeoff.png"] = plot_exit_tradeoff
    for run in runs:
        beams = [r for r in run.results if r["exit"] == "none" and r["decode"] != "greedy"]
        if beams:
            columns: dict[str, list[dict]] = {}
            for r in run.fixed() + beams:
                columns.setdefault(f"r={r['recurrences']} {r['decode']}", []).append(r)
            md += [f"## Beam search against greedy: {run.name}\n\n{scaling_table(columns)}\n"]
    md += ["## Cost", "", "Parameters per token count a shared block once per use; FLOPs/token are forward, at the"]
    md += ["model's full context.", "", cost_table(runs), ""]
    if any(run.dynamics for run in runs):
        plots["settle_or_drift.png"] = plot_settle_or_drift
    if any(run.metrics for run in runs):
        plots["training.png"] = plot_training
    md += ["## Plots", ""]
    for name, plot in plots.items():
        plot(runs, out_dir / name)
        md += [f"![{name[:-4]}]({name})", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    return out_dir
