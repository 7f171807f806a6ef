"""`recurlm presets`: every preset with its parameter and FLOP counts."""

import json

from recurlm.config import load_config, preset_names, read_preset
from recurlm.network.model import build_model


def register(sub):
    s = sub.add_parser("presets", help="list presets with parameter and FLOP counts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)


def run(args):
    rows = []
    for name in preset_names():
        configs = load_config(name)
        cfg = configs.model
        model = build_model(cfg, "meta")  # no memory, no init: counting only
        r = configs.inference.recurrences
        rows.append(
            {
                "preset": name,
                "unique_params": model.param_groups()["unique"],
                "P": cfg.n_prelude,
                "R": cfg.n_core,
                "C": cfg.n_coda,
                "train_mean_r": configs.recurrence.mean if cfg.n_core else 1,
                "recurrences": r,
                "effective_depth": model.effective_depth(r),
                "params_per_token": model.params_per_token(r),
                "flops_per_token": model.flops_per_token(r),
                "description": read_preset(name).get("description", ""),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'preset':<24} {'params':>13} {'P,R,C':>8} {'mean r':>6} {'depth':>5} {'params/tok':>13} {'FLOPs/tok':>14}")
    for row in rows:
        prc = f"{row['P']},{row['R']},{row['C']}"
        print(
            f"{row['preset']:<24} {row['unique_params']:>13,} {prc:>8} {row['train_mean_r']:>6g} "
            f"{row['effective_depth']:>5} {row['params_per_token']:>13,} {row['flops_per_token']:>14,}"
        )
    print("FLOPs/tok: forward, at the inference r and the preset's full context (docs/design.md §1).")
