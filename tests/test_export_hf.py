"""`recurlm export hf`: the exported directory, loaded by transformers in a fresh offline process, computes what
recurlm computes (logits, greedy tokens, per-token exit) for every architecture switch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from recurlm.checkpoint import build_tokenizer, load_checkpoint, save_checkpoint
from recurlm.cli import main
from recurlm.config import load_config
from recurlm.inference.engine import Engine
from recurlm.network.exits import Halting
from recurlm.network.model import build_model
from recurlm.text.tokenizer import significance_ids

pytest.importorskip("transformers")

SMALL = ["d_model=32", "n_head=4", "mlp_hidden=48", "seq_len=40"]
ARCHITECTURES = {
    # MiniAxion's switches: factorised projections, SwiGLU, tied embeddings, 'add' injection
    "factorised": ("miniaxion-0.9m", ["proj_rank=4", "recurrences=3"]),
    "concat-gqa-softcap-gate": ("miniaxion-0.9m", ["inject=concat_linear", "n_kv_head=2", "mlp=relu2",
                                                   "tie_embeddings=false", "logit_softcap=15", "state_init=zero",
                                                   "exit_gate=true"]),
    "lora-random-state": ("miniaxion-0.9m", ["recur_lora_rank=2", "recur_lora_count=2", "state_init=random"]),
    "gate-abacus": ("rrslm-addition", ["n_core=1", "abacus_shift=1", "abacus_operands=2"]),
    "contractive-sandwich": ("miniaxion-0.9m", ["inject=contractive", "sandwich_norm=true", "recurrences=3"]),
    "plain-nope-logn": ("miniaxion-0.9m", ["n_core=0", "n_prelude=2", "n_coda=1", "rope=false", "logn_attention=true"]),
}  # fmt: skip

EXITS = ("latent:0.255", "latent:0.3", "latent:0.45", "kl:0.001", "kl:0.01", "kl:0.1", "cosine:0.01", "cosine:0.05",
         "entropy:0.01", "entropy:0.1", "minp:0.01", "argmax:1", "argmax:2", "gate:0.3", "gate:0.6")  # fmt: skip
# generate() through the export's cache: (kv budget, warm start, exit) at num_steps = 3
CACHED = ((1, True, "none"), (3, False, "none"), (1, True, "kl:0.01"), (2, False, "latent:0.3"), (3, True, "argmax:1"))
LOAD = (
    f"EXITS = {EXITS}\nCACHED = {CACHED}\n"
    + r"""
import json, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
spec, out = json.load(open(sys.argv[1])), {}
for name, s in spec.items():
    tok = AutoTokenizer.from_pretrained(s["dir"], trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(s["dir"], trust_remote_code=True).eval()
    ids = torch.tensor([tok(s["text"]).input_ids]) if s["text"] else torch.tensor([s["ids"]])
    res = {"ids": ids[0].tolist(), "logits": {}}
    with torch.no_grad():
        for r in s["rs"]:
            torch.manual_seed(0)
            res["logits"][r] = model(ids, num_steps=r, exit="none").logits[0].tolist()
        res["exit"] = {}
        for spec in EXITS:
            if spec.startswith("gate") and not model.config.exit_gate:
                continue
            torch.manual_seed(0)
            ex = model(ids, num_steps=4, exit=spec)
            res["exit"][spec] = {"logits": ex.logits[0].tolist(), "steps": ex.steps[0].tolist()}
        torch.manual_seed(0)
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, num_steps=2, exit="none", use_cache=False)
        res["cached"], fed = {}, []
        hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
        for budget, warm, spec in CACHED:
            fed.clear()
            got = model.generate(ids, max_new_tokens=8, do_sample=False, num_steps=3, exit=spec, kv_budget=budget,
                                 warm_start=warm, eos_token_id=None)
            res["cached"][f"{budget} {warm} {spec}"] = {"tokens": got[0, ids.shape[1]:].tolist(), "fed": list(fed)}
        hook.remove()
    res["generated"] = gen[0, ids.shape[1]:].tolist()
    res["decoded"] = tok.decode(res["generated"], skip_special_tokens=True)
    trace = "<INST>What is 1 + 2?</INST><THINK><STEP>1 + 2 = 3</STEP></THINK><ANS>3</ANS>"
    res["trace"] = tok.decode(tok(trace).input_ids, skip_special_tokens=True) if "<STEP>" in tok.get_vocab() else trace
    if s.get("pipeline"):
        from transformers import pipeline
        pipe = pipeline("text-generation", model=s["dir"], trust_remote_code=True)
        res["pipeline"] = pipe(s["text"], max_new_tokens=6, do_sample=False, num_steps=2, exit="none",
                               return_full_text=False)[0]["generated_text"]
    res["default_r"] = model.config.num_steps
    out[name] = res
json.dump(out, open(sys.argv[2], "w"))
"""
)


def perturbed(configs, seed):
    torch.manual_seed(seed)
    model = build_model(configs.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # blocks start as identities: perturb so that equality means something
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each architecture saved as a recurlm checkpoint, exported, and run by transformers in one fresh process."""
    root = tmp_path_factory.mktemp("hf")
    spec = {}
    for i, (name, (preset, overrides)) in enumerate(ARCHITECTURES.items()):
        configs = load_config(preset, overrides=[*SMALL, *overrides])
        tok = build_tokenizer(configs)
        save_checkpoint(root / name, perturbed(configs, i), tok, configs)
        assert main(["export", "hf", str(root / name), str(root / f"{name}-hf")]) in (0, None)
        text = "12+34=" if preset == "rrslm-addition" else "<INST>What is 4 + 5?</INST>"
        spec[name] = {"dir": str(root / f"{name}-hf"), "text": text, "rs": [1, 2], "pipeline": i == 0}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "load.py").write_text(LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(root / "load.py"), str(root / "spec.json"), str(root / "out.json")],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "to instantiate a model of type" not in run.stderr  # the README's way of loading warns of nothing
    return root, json.loads((root / "out.json").read_text())


def recurlm_logits(model, ids, r, digit_pos=None):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.tensor([ids]), r, digit_pos=digit_pos)[0]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_exported_model_computes_what_recurlm_computes(exported, name):
    root, results = exported
    res = results[name]
    model, tok, configs = load_checkpoint(root / name)
    ids = res["ids"]
    bos = tok.token_id("<|bos|>")
    assert ids[:1] == ([bos] if bos is not None else ids[:1])  # the tokenizer puts BOS first, as recurlm does
    digit_pos = None
    if configs.model.abacus:
        shift, operands = configs.model.abacus_shift, configs.model.abacus_operands
        digit_pos = torch.tensor([significance_ids(ids, len(ids), tok.digit_ids, shift, operands)])
    default_r = configs.inference.recurrences
    assert res["default_r"] == default_r
    for r in (1, 2):
        got = torch.tensor(res["logits"][str(r)])
        assert torch.allclose(got, recurlm_logits(model, ids, r, digit_pos), atol=1e-5), r

    # per-token exit: the same loop as recurlm's, tokens stopping at their own iteration
    x, varied = torch.tensor([ids]), False
    assert ("gate:0.3" in res["exit"]) == configs.model.exit_gate
    for spec in res["exit"]:
        torch.manual_seed(0)
        with torch.no_grad():
            ctx = model.context(len(ids))
            e = model.embed(x, ctx, digit_pos)
            run = model.recur_until(e, model.init_state(e), Halting.build([(4, 1, spec)]), ctx)
            want, steps = model.head(run.state, ctx)[0], run.steps
        got = res["exit"][spec]
        assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-5)
        assert got["steps"] == steps[0].tolist()
        varied |= len(set(got["steps"])) > 1
    assert varied or not configs.model.n_core  # some threshold stops tokens at different iterations

    # greedy generation: recurlm's engine with an exact cache (budget r, cold start) gives the same tokens (not
    # with a random initial state: the engine seeds its noise per sequence, transformers draws from torch's generator)
    if configs.model.state_init == "random":
        return
    pol = configs.inference.override(recurrences=2, kv_budget=2, warm_start=False, exit="none")
    torch.manual_seed(0)
    gen = Engine(model, tok.digit_ids if configs.model.abacus else None).generate([ids], 6, pol, tok.stop_ids)
    assert res["generated"][: len(gen.tokens[0])] == gen.tokens[0]
    # with the cache, generate() decodes as recurlm's engine does, feeding one new token per forward
    for budget, warm, spec in CACHED:
        pol = configs.inference.override(recurrences=3, kv_budget=budget, warm_start=warm, exit=spec)
        want = Engine(model, tok.digit_ids if configs.model.abacus else None).generate([ids], 8, pol)
        got = res["cached"][f"{budget} {warm} {spec}"]
        assert got["tokens"] == want.tokens[0], (budget, warm, spec)
        assert got["fed"] == [len(ids)] + [1] * 7
    # decoded as pipelines do (skip_special_tokens): only BOS/EOS/PAD go, the trace tags stay
    dropped = {tok.token_id(t) for t in ("<|bos|>", "<|eos|>", "<|pad|>")} | {tok.eos_id}
    assert res["decoded"] == tok.decode([t for t in res["generated"] if t not in dropped])
    assert res["trace"] == "<INST>What is 1 + 2?</INST><THINK><STEP>1 + 2 = 3</STEP></THINK><ANS>3</ANS>"
    if "pipeline" in res:
        assert res["pipeline"] == res["decoded"]


def test_export_refuses_a_non_empty_directory(tmp_path, capsys):
    configs = load_config("miniaxion-0.9m", overrides=SMALL)
    save_checkpoint(tmp_path / "ck", perturbed(configs, 0), build_tokenizer(configs), configs)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["export", "hf", str(tmp_path / "ck"), str(tmp_path / "taken")])
    assert exc.value.code == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert main(["export", "hf", str(tmp_path / "ck"), str(tmp_path / "taken"), "--force"]) in (0, None)
    assert not (tmp_path / "taken" / "keep.txt").exists()
    card = (tmp_path / "taken" / "README.md").read_text()
    assert "num_steps" in card and "<INST>" in card
