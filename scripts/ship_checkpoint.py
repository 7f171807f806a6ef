"""Copy a run's checkpoint to the directory that ships it: config, tokenizer and weights, without the optimizer and
trainer state; `--bf16` stores the weights in bfloat16 (half the size: recurlm loads them into fp32 parameters).

    python scripts/ship_checkpoint.py runs/rn-mini checkpoints/recursive-nanochat-mini --bf16
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from recurlm.checkpoint import load_checkpoint, resolve
from recurlm.errors import UserError


def ship(run: str, out: str, bf16: bool) -> Path:
    source = resolve(run)
    load_checkpoint(source)  # a whole, loadable checkpoint, or a one-line error
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, target / name)
    weights = load_file(source / "model.safetensors")
    if bf16:
        weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory or checkpoint")
    p.add_argument("out")
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    try:
        target = ship(args.run, args.out, args.bf16)
    except UserError as e:
        sys.exit(f"error: {e}")
    size = (target / "model.safetensors").stat().st_size
    print(f"wrote {target} ({size / 2**20:.1f} MiB of weights)")


if __name__ == "__main__":
    main()
