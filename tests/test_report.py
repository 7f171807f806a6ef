import json
import math

import matplotlib.image
import pytest

from recurlm.analysis.compare import baseline_layers, compare, plain_configs
from recurlm.analysis.report import scaling_table, write_report
from recurlm.checkpoint import load_checkpoint
from recurlm.cli import main
from recurlm.config import load_config
from recurlm.evaluation.metrics import standard_error
from recurlm.network.model import build_model


def assert_real_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_report_evaluates_once_then_plots(run_dir, tmp_path):
    out = write_report([str(run_dir)], tmp_path / "report", recurrences=[1, 2], exits=["kl:0.01"], limit=6)
    saved = json.loads((run_dir / "eval.json").read_text())["results"]
    assert {(r["recurrences"], r["exit"]) for r in saved} == {(1, "none"), (2, "none"), (2, "kl:0.01")}
    md = (out / "report.md").read_text()
    params = load_checkpoint(run_dir, "meta")[0].param_groups()["unique"]
    for section in ("Does thinking longer help?", "Adaptive exit", "## Cost", "| r=1 | r=2 |", f"| {params:,} |"):
        assert section in md, section
    pngs = ["accuracy_vs_r.png", "accuracy_vs_difficulty.png", "steps_vs_difficulty.png", "exit_tradeoff.png"]
    pngs += ["training.png", "settle_or_drift.png"]
    dynamics = json.loads((run_dir / "eval.json").read_text())["dynamics"]
    assert [r["iteration"] for r in dynamics if r["task"] == "addition"] == [1, 2]  # traced to the largest r
    for name in pngs:
        assert f"]({name})" in md
        assert_real_png(out / name)
    # a second report reads the saved results instead of evaluating again, also rows with only docs/design.md §4's keys
    row = {"task": "addition", "recurrences": 3, "accuracy": 0.123, "n": 5, "mean_steps": 3.0, "tokens_per_s": 9.0}
    (run_dir / "eval.json").write_text(json.dumps({"results": [row]}))
    assert "0.123" in (write_report([str(run_dir)], tmp_path / "again").joinpath("report.md").read_text())
    # results on the validation split (`recurlm eval --split val --json`) stay out of a report
    val = {"split": "val", "results": [{**row, "recurrences": 5, "accuracy": 0.456}]}
    (run_dir / "eval-val.json").write_text(json.dumps(val))
    md = write_report([str(run_dir)], tmp_path / "third").joinpath("report.md").read_text()
    assert "0.123" in md and "0.456" not in md and "r=5" not in md
    (run_dir / "eval.json").unlink()
    (run_dir / "eval-val.json").unlink()


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "missing")])
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_baselines_match_parameters_and_flops():
    configs = load_config("recursive-nanochat-d20")
    layers = baseline_layers(configs)
    assert sorted(layers.values()) == [8, 20]  # P + R + C and P + R * mean r + C
    rec = build_model(configs.model, "meta")
    for n in layers.values():
        plain = build_model(plain_configs(configs, n).model, "meta")
        assert plain.cfg.n_core == 0 and plain.effective_depth(1) == n
    iso_flops = build_model(plain_configs(configs, 20).model, "meta")
    # within the concat_linear adapter the recursive model runs once per iteration (2.4% at d20)
    assert iso_flops.flops_per_token(1) == pytest.approx(rec.flops_per_token(4), rel=0.03)
    iso_params = build_model(plain_configs(configs, 8).model, "meta")
    assert iso_params.param_groups()["unique"] == pytest.approx(rec.param_groups()["unique"], rel=0.02)


def test_baselines_of_a_run_with_an_exit_gate_leave_the_gate_out():
    configs = load_config("recursive-nanochat-mini")  # (3,1,4) with a stage that trains only the gate
    assert configs.model.exit_gate and "gate" in configs.stages
    plain = plain_configs(configs, 8)
    assert not plain.model.exit_gate and list(plain.stages) == ["pretrain", "sft"]
    assert plain.stages["sft"] == configs.stages["sft"]  # the same data and steps otherwise


def test_compare_trains_both_baselines_on_the_same_tokens(run_dir, tmp_path):
    table = compare(str(run_dir), recurrences=[1, 2], limit=4)
    header = table.splitlines()[0]
    assert "plain 3L (iso-params)" in header and "plain 7L (iso-FLOPs)" in header and "| r=2 |" in header
    assert "mean over tasks" in table
    tokens = {
        json.loads((run_dir / "baselines" / d / "checkpoint" / "trainer_state.json").read_text())["tokens"]
        for d in ("plain-3L", "plain-7L")
    }
    assert tokens == {json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text())["tokens"]}

    # a report over several runs: the plain baseline is evaluated at its one depth and drawn as a reference line
    plain = run_dir / "baselines" / "plain-3L"
    out = write_report([str(run_dir), str(plain)], tmp_path, recurrences=[1, 2], exits=["kl:0.01"], limit=4)
    assert {r["recurrences"] for r in json.loads((plain / "eval.json").read_text())["results"]} == {1}
    md = (out / "report.md").read_text()
    assert "### tiny" in md and "### plain-3L" in md and "| plain-3L | " in md
    # the runs side by side, tasks pooled over difficulties: one row per task, a column per run and r
    side = md.split("### Side by side")[1].split("\n\n")[1].splitlines()
    assert side[0] == "| task | tiny r=1 | tiny r=2 | plain-3L |"
    assert [line.split(" |")[0] for line in side[2:]] == [
        "| addition",
        "| mean over tasks",
        "| ± standard error of the mean",
    ]
    for png in ("accuracy_vs_r.png", "aggregate_vs_r.png"):
        assert_real_png(out / png)


def test_scaling_table_aggregates_chatcore_tasks():
    rows = {
        "r=2": [
            {"task": "arc_easy", "difficulty": 1, "accuracy": 0.5, "n": 10},
            {"task": "gsm8k", "difficulty": 1, "accuracy": 0.1, "n": 10},
        ],
        "r=4": [{"task": "arc_easy", "difficulty": 1, "accuracy": 0.25, "n": 10}],
    }
    last = scaling_table(rows).splitlines()[-1]
    assert last == f"| ChatCORE | {((0.5 - 0.25) / 0.75 + 0.1) / 2:.3f} | 0.000 |"


def test_scaling_table_centres_guessable_tasks_on_chance():
    rows = {
        "r=1": [
            {"task": "even_odd", "difficulty": 1, "accuracy": 0.5, "n": 10},
            {"task": "sorting", "difficulty": 1, "accuracy": 0.3, "n": 10},
        ]
    }
    *_, mean, error, centred = scaling_table(rows).splitlines()
    assert mean == "| mean over tasks | 0.400 |" and centred == "| mean over tasks, centred on chance | 0.150 |"
    # each task's sample variance over its 10 credits, the two tasks independent: sqrt(.25/9 + .21/9) / 2
    assert error == f"| ± standard error of the mean | {math.sqrt(0.25 / 9 + 0.21 / 9) / 2:.3f} |"


def test_standard_error_pools_difficulties_and_shrinks_with_examples():
    rows = [{"task": "a", "difficulty": d, "accuracy": 0.9, "n": 50} for d in (1, 2)]
    assert standard_error(rows) == pytest.approx(math.sqrt(0.9 * 0.1 / 99))  # one task of 100 examples
    quadrupled = [dict(r, n=200) for r in rows]
    assert standard_error(quadrupled) == pytest.approx(math.sqrt(0.9 * 0.1 / 399))  # about half
    assert standard_error([dict(r, accuracy=1.0) for r in rows]) == 0.0
    assert standard_error([]) is None


def test_plots_keep_every_line_visible_with_integer_ticks_accuracy_from_zero_and_legends_outside(run_dir, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from recurlm.analysis import report

    run = report.Run(str(run_dir))
    base = dict(task="addition", decode="greedy", n=10, tokens_per_s=1.0)
    run.results = [
        {**base, "difficulty": d, "recurrences": r, "exit": "none", "accuracy": 1.0, "mean_steps": r, "max_steps": r}
        for d in (1, 2, 3)
        for r in (1, 2, 4)
    ] + [
        {**base, "difficulty": d, "recurrences": 4, "exit": spec, "accuracy": 0.95, "mean_steps": 1.5, "max_steps": 4}
        for d in (1, 2, 3)
        for spec in ("kl:0.01", "latent:0.1")  # the same steps at every difficulty: lines that coincide
    ]
    run.metrics = [{"step": s, "eval": {f"task{i}/1": 0.5 for i in range(13)}} for s in (100, 200)]
    for plot in (report.plot_accuracy_vs_difficulty, report.plot_steps_vs_difficulty, report.plot_exit_tradeoff,
                 report.plot_accuracy_vs_r, report.plot_training):  # fmt: skip
        fig = plot([run], tmp_path / "p.png")
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # the layout as saved
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        legend = fig.legends[0].get_window_extent(renderer)
        page = fig.bbox
        assert page.x0 <= legend.x0 and legend.x1 <= page.x1 + 1  # on the page...
        assert all(legend.x0 >= ax.get_window_extent(renderer).x1 for ax in axes)  # ...beside the data
        ax = axes[-1] if plot is report.plot_training else axes[0]
        if plot is report.plot_exit_tradeoff:  # zoomed on the points: exits and fixed r differ by a point or two
            lo, hi = ax.get_ylim()
            ys = [y for points in ax.collections for y in points.get_offsets()[:, 1]]
            assert lo < min(ys) and max(ys) < hi and hi - lo < 0.5
        elif plot is not report.plot_steps_vs_difficulty:
            assert ax.get_ylim()[0] == 0  # accuracies from 0
        if plot in (report.plot_accuracy_vs_difficulty, report.plot_steps_vs_difficulty):
            lo, hi = ax.get_xlim()
            assert all(float(t).is_integer() for t in ax.get_xticks() if lo <= t <= hi)
            xs = [tuple(line.get_xdata()) for line in ax.get_lines() if line.get_marker() in report.MARKERS]
            assert len(xs) >= 2 and len(set(xs)) == len(xs)  # equal values, still side by side
        if plot is report.plot_accuracy_vs_r:
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        if plot is report.plot_training:
            assert len(fig.legends[0].get_texts()) == 13
    other = report.Run(str(run_dir))
    other.metrics, other.name = run.metrics, "other"
    twice = report.plot_training([run, other], tmp_path / "p.png")  # 26 sets: a line per run, their mean
    labels = [t.get_text() for t in twice.legends[0].get_texts()]
    assert labels == [f"{name}: mean of 13 sets" for name in (run.name, "other")]
