import json

import pytest

from recurlm.checkpoint import load_checkpoint
from recurlm.cli import main
from recurlm.tasks import get_task, read_jsonl, split_of, write_jsonl


def test_eval_json_and_scaling_table(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    main(
        [
            "eval",
            "--checkpoint",
            str(run_dir),
            "--task",
            "addition",
            "--recurrences",
            "1,2",
            "--limit",
            "5",
            "--dynamics",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "accuracy by r" in printed and "r=2" in printed and "settle or drift" in printed
    res = json.loads(out.read_text())["results"]
    trained_r = load_checkpoint(run_dir, "meta")[2].inference.recurrences
    traced = json.loads(out.read_text())["dynamics"]  # 4x the trained r, a row per iteration, finite values
    assert [r["iteration"] for r in traced] == list(range(1, 4 * trained_r + 1))
    assert all(r["state_change"] >= 0 and r["distribution_change"] >= -1e-6 for r in traced)
    assert {(r["difficulty"], r["recurrences"]) for r in res} == {(d, r) for d in (1, 2) for r in (1, 2)}
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 5 and r["tokens_per_s"] > 0 for r in res)
    assert {r["exit"] for r in res} == {"none"}  # a sweep of r runs each r fixed, and says so
    default_exit = load_checkpoint(run_dir, "meta")[2].inference.exit  # the preset's: a KL threshold
    assert all(r["mean_steps"] == r["recurrences"] for r in res) and f"exit {default_exit} is off" in printed
    main(["eval", "--checkpoint", str(run_dir), "--task", "addition", "--limit", "5", "--json", str(out)])
    res = json.loads(out.read_text())["results"]  # without --recurrences: the run's own policy, exit included
    assert {(r["exit"], r["recurrences"]) for r in res} == {(default_exit, trained_r)} and default_exit != "none"
    assert all(1 <= r["mean_steps"] <= r["recurrences"] for r in res)


def test_eval_self_speculative_scores_as_greedy(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(run_dir), "--task", "addition", "--recurrences", "1,4", "--exit", "none"]
    main([*args, "--kv-budget", "4", "--limit", "6", "--draft", "1:3", "--json", str(out)])
    res = json.loads(out.read_text())["results"]
    greedy = {r["difficulty"]: r for r in res if r["decode"] == "greedy" and r["recurrences"] == 4}
    drafted = {r["difficulty"]: r for r in res if r["decode"] == "draft1x3"}
    assert drafted.keys() == greedy.keys() and all(r["recurrences"] == 4 for r in drafted.values())  # not at r=1
    assert all(drafted[d]["accuracy"] == greedy[d]["accuracy"] for d in greedy)
    assert all(0 < r["acceptance"] <= 1 for r in drafted.values()) and "acceptance" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--draft", "x:2"])
    assert "expected R:K" in capsys.readouterr().err


def test_export_then_eval_data(run_dir, tmp_path, capsys):
    path = tmp_path / "test.jsonl"
    main(["data", "export", "--task", "addition", "--split", "test", "--n", "12", "--seed", "3", "--out", str(path)])
    examples = read_jsonl(path)
    assert len(examples) == 12 and all(split_of(ex.prompt) == "test" for ex in examples)
    assert examples == get_task("addition").generate("test", 12, seed=3)  # deterministic
    out, samples = tmp_path / "eval.json", tmp_path / "samples.jsonl"
    main(["eval", "--checkpoint", str(run_dir), "--data", str(path), "--json", str(out), "--samples", str(samples)])
    res = json.loads(out.read_text())["results"]
    assert [r["difficulty"] for r in res] == [1, 2, 3] and sum(r["n"] for r in res) == 12  # a row per difficulty
    logged = [json.loads(line) for line in samples.read_text().splitlines()]  # each problem once, as it was scored
    assert sorted((s["prompt"], s["answer"]) for s in logged) == sorted((ex.prompt, ex.answer) for ex in examples)
    for row in res:
        mine = [s for s in logged if s["difficulty"] == row["difficulty"]]
        assert sum(s["correct"] for s in mine) / len(mine) == row["accuracy"] and "samples" not in row
        assert all(s["recurrences"] == row["recurrences"] and isinstance(s["output"], str) for s in mine)
    ones = tmp_path / "ones.jsonl"
    write_jsonl([ex for ex in examples if ex.difficulty == 1], ones)
    main(["eval", "--checkpoint", str(run_dir), "--data", str(path), "--data", str(ones), "--json", str(out)])
    res = json.loads(out.read_text())["results"]
    assert [(r["task"], r["difficulty"]) for r in res] == [(str(path), d) for d in (1, 2, 3)] + [(str(ones), 1)]
    assert res[0]["accuracy"] == res[3]["accuracy"]  # the same examples score the same from either file


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ('{"prompt": "1+1="}\n', ":1: malformed"),
        ('{"prompt": "1", "answer": "2"}\nnot json\n', ":2: malformed"),
    ],
)
def test_bad_data_files(run_dir, tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(run_dir), "--data", str(path)])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_exits_beam_and_max_steps(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(run_dir), "--task", "addition", "--recurrences", "3", "--limit", "4"]
    main([*args, "--exit", "none", "--exit", "latent:0", "--max-steps", "2", "--beam", "2", "--json", str(out)])
    res = json.loads(out.read_text())["results"]
    settings = {(r["exit"], r["decode"]) for r in res}
    assert settings == {(e, d) for e in ("none", "latent:0") for d in ("greedy", "beam2")}
    assert {r["max_steps"] for r in res if r["exit"] == "latent:0"} == {2}  # capped: threshold 0 never fires
    assert {r["max_steps"] for r in res if r["exit"] == "none"} == {3}
    assert "accuracy by r (beam2, exit latent:0)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--exit", "none", "--max-steps", "2"])
    assert "--max-steps caps adaptive exit" in capsys.readouterr().err


def test_chatcore_over_benchmark_tasks(tmp_path, capsys):
    """A BPE model scored on MMLU (letter logits) and SpellingBee (generated): ChatCORE in the table and the JSON."""
    from recurlm.config import load_config
    from recurlm.training.trainer import train

    tiny = ["d_model=32", "n_head=2", "mlp_hidden=64", "batch_size=4", "eval_n=1", "stage.sft.steps=2"]
    run = tmp_path / "bpe"
    train(load_config("miniaxion-0.9m", overrides=[*tiny, "stage.sft.tasks=spelling_bee"]), run)
    (tmp_path / "mmlu.csv").write_text('"2+2=?",3,4,5,6,B\n"1+1=?",2,3,4,5,A\n"3+3=?",5,6,7,8,B\n')
    out = tmp_path / "eval.json"
    main(
        ["eval", "--checkpoint", str(run), "--task", f"mmlu:{tmp_path / 'mmlu.csv'}", "--task", "spelling_bee"]
        + ["--recurrences", "1,2", "--limit", "3", "--json", str(out)]
    )
    report = json.loads(out.read_text())
    acc = {(r["task"], r["recurrences"]): r["accuracy"] for r in report["results"] if r["difficulty"] == 1}
    for entry in report["chatcore"]:
        r = entry["recurrences"]
        spelling = [x for x in report["results"] if x["task"] == "spelling_bee" and x["recurrences"] == r]
        spelling_acc = sum(x["accuracy"] * x["n"] for x in spelling) / sum(x["n"] for x in spelling)
        expected = ((acc[(f"mmlu:{tmp_path / 'mmlu.csv'}", r)] - 0.25) / 0.75 + spelling_acc) / 2
        assert entry["chatcore"] == pytest.approx(expected)
    assert len(report["chatcore"]) == 2 and "| ChatCORE |" in capsys.readouterr().out
