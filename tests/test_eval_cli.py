import json

import pytest
from test_train import TINY

from recurlm.cli import main
from recurlm.config import load_config
from recurlm.tasks import get_task, read_jsonl, split_of
from recurlm.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config("rrslm-addition", overrides=[*TINY, "stage.curriculum.steps=10"]), out)
    return out


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
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "accuracy by r" in printed and "r=2" in printed
    res = json.loads(out.read_text())["results"]
    assert {(r["difficulty"], r["recurrences"]) for r in res} == {(d, r) for d in (1, 2) for r in (1, 2)}
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 5 and r["tokens_per_s"] > 0 for r in res)
    assert {r["mean_steps"] for r in res if r["recurrences"] == 2} == {2.0}


def test_export_then_eval_data(run_dir, tmp_path, capsys):
    path = tmp_path / "test.jsonl"
    main(["data", "export", "--task", "addition", "--split", "test", "--n", "12", "--seed", "3", "--out", str(path)])
    examples = read_jsonl(path)
    assert len(examples) == 12 and all(split_of(ex.prompt) == "test" for ex in examples)
    assert examples == get_task("addition").generate("test", 12, seed=3)  # deterministic
    out = tmp_path / "eval.json"
    main(["eval", "--checkpoint", str(run_dir), "--data", str(path), "--json", str(out)])
    res = json.loads(out.read_text())["results"]
    assert len(res) == 1 and res[0]["n"] == 12


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
