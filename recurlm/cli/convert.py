"""`recurlm import nanochat`, `recurlm export hf` and `recurlm lm-eval`: checkpoints to and from other tools."""

import argparse
from pathlib import Path

from recurlm.errors import UserError


def register(sub, parser_class):
    source = sub.add_parser("import", help="another project's checkpoint as a recurlm checkpoint").add_subparsers(
        dest="source", required=True, parser_class=parser_class
    )
    s = source.add_parser("nanochat", help="nanochat's model_<step>.pt + meta_<step>.json (plain or recursive)")
    s.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="the directory holding model_<step>.pt")
    s.add_argument("--step", type=int, help="default: the latest")
    s.add_argument("--tokenizer", help="directory of tokenizer.pkl (default: CHECKPOINT_DIR/../../tokenizer)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=import_nanochat)

    target = sub.add_parser("export", help="a checkpoint in another tool's format").add_subparsers(
        dest="target", required=True, parser_class=parser_class
    )
    s = target.add_parser("hf", help="a Hugging Face transformers model directory (trust_remote_code=True)")
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    s.set_defaults(func=export_hf)

    s = sub.add_parser("lm-eval", help="lm_eval's command line with --model recurlm registered", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval's arguments, e.g. --model recurlm --tasks ...")
    s.set_defaults(func=lm_eval)


def import_nanochat(args):
    from recurlm.checkpoint import save_checkpoint
    from recurlm.importers.nanochat import import_nanochat

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists: choose another --out, or --force to replace it")
    model, tok, configs = import_nanochat(args.checkpoint_dir, args.tokenizer, args.step)
    save_checkpoint(out, model, tok, configs)
    cfg = configs.model
    blocks = f"(P,R,C) = ({cfg.n_prelude},{cfg.n_core},{cfg.n_coda})" if cfg.n_core else f"{cfg.n_prelude} layers"
    print(f"imported {blocks}, width {cfg.d_model}, vocab {tok.vocab_size} into {out}")


def export_hf(args):
    from recurlm.export.hf import export_hf

    out = export_hf(args.checkpoint, args.out_dir, args.force)
    print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


def lm_eval(args):
    try:
        from recurlm.evaluation.harness import main as harness_main
    except ImportError:
        raise UserError("recurlm lm-eval needs lm-evaluation-harness: pip install 'recurlm[lm-eval]'") from None
    harness_main(args.args)
