import json

import pytest

from recurlm.config import load_config
from recurlm.errors import UserError
from recurlm.text.tokenizer import Tokenizer
from recurlm.training.corpus import TextStream, iter_documents
from recurlm.training.trainer import train

DOCS = [f"document {i}: " + " ".join(["the quick brown fox jumps over the lazy dog."] * (i % 4 + 1)) for i in range(40)]


@pytest.fixture
def corpus(tmp_path):
    tmp_path = tmp_path / "corpus"
    tmp_path.mkdir()
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:20]) + "\n")
    with open(tmp_path / "b.jsonl", "w") as f:
        for d in DOCS[20:30]:
            f.write(json.dumps({"text": d}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS[30:], "id": list(range(10))}), tmp_path / "c.parquet")
    return tmp_path


def test_reads_every_format_in_order(corpus):
    assert list(iter_documents(str(corpus))) == DOCS
    assert list(iter_documents(f"{corpus}/b.jsonl,{corpus}/c.parquet")) == DOCS[20:]


def test_packing_and_rank_sharding(corpus):
    tok = Tokenizer.bpe(DOCS, 300)
    stream = TextStream(str(corpus), tok, seq_len=16)
    n = sum(len(tok.encode(d)) + 1 for d in DOCS) // 17
    rows = [next(stream.rows) for _ in range(n)]
    assert all(len(r) == 17 for r in rows)
    flat = [t for r in rows for t in r]
    expected = [t for d in DOCS for t in [tok.token_id("<|bos|>"), *tok.encode(d)]]
    assert flat == expected[: len(flat)]
    assert next(stream.rows) == rows[0]  # the next epoch starts over
    r0 = [next(TextStream(str(corpus), tok, 16, 0, 2).rows) for _ in range(1)]
    s1 = TextStream(str(corpus), tok, 16, 1, 2)
    assert r0[0] == rows[0] and next(s1.rows) == rows[1]
    s1.skip(2)
    assert next(s1.rows) == rows[7]
    x, y = TextStream(str(corpus), tok, 16).batch(3)
    assert x.shape == (3, 16) and (x[:, 1:] == y[:, :-1]).all()


@pytest.mark.parametrize("content, message", [("", "empty"), ('{"text": "a"}\n{"txt": 1}\n', ":2: malformed")])
def test_bad_corpus(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    tok = Tokenizer.bpe([], 300)
    with pytest.raises(UserError, match=message):
        TextStream(str(path), tok, 8).batch(2)
    with pytest.raises(UserError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.txt")))


def test_pretrain_on_text_then_sft_on_tasks(corpus, tmp_path):
    overrides = [
        "vocab_size=512",
        "seq_len=64",
        "d_model=32",
        "n_head=2",
        "batch_size=8",
        "log_every=1",
        "eval_n=4",
        "lr=0.01",
    ]
    with pytest.raises(UserError, match="unknown stage 'pretrain'"):  # a typo in a stage name is not a new stage
        load_config("miniaxion-0.9m", overrides=["stage.pretrain.steps=3"])
    toml = tmp_path / "stages.toml"
    toml.write_text(
        f'[stage.pretrain]\ntext = "{corpus}"\nsteps = 12\nloss = "all"\n\n'
        '[stage.sft]\ntasks = "arithmetic"\nsteps = 4\n'
    )
    configs = load_config(None, str(toml), overrides)
    _, state = train(configs, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    pre = [r["loss"] for r in rows if r.get("stage") == "pretrain" and "loss" in r]
    assert state["step"] == 16 and len(pre) == 12 and pre[-1] < 0.8 * pre[0]
    assert any(r.get("stage") == "sft" for r in rows)
