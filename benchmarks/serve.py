"""Serving throughput and latency: `recurlm serve` in its own process, 1, 4, 16 and 50 concurrent streaming clients.

    .venv/bin/python benchmarks/serve.py [--checkpoint checkpoints/miniaxion-0.9m] [--requests 4] [--max-tokens 64]
        [--only clients,depths] [--rounds 1]
Each client sends `--requests` chat requests one after another (MiniAxion test questions, greedy, the checkpoint's
r). Prints the machine, then per concurrency: aggregate generated tokens/s, p50/p95 time to first token and p50/p95
inter-token latency. Batching amortises the per-step cost that dominates small-model decoding on a CPU, so the
aggregate should grow with the clients (goal: >= 4x at 16 clients against 1).

`depths`: 16 clients all at r = 2, all at r = 16, and mixed (r = 2, 4, 8, 16 and adaptive exits, four clients at
r = 2 among them): aggregate tokens/s and inter-token latency, and the r = 2 clients' own p50 (goal: within 1.5x
of their latency when every client is at r = 2: a deep client must not slow the others, depth batching).
"""

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import machine

from recurlm.tasks import get_task
from recurlm.tasks.reasoning import SUITE

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(http, url, questions, max_tokens, ttft, itl, extra=None) -> int:
    tokens = 0
    for q in questions:
        body = {"messages": [{"role": "user", "content": q}], "stream": True, "max_tokens": max_tokens, **(extra or {})}
        t0 = last = time.perf_counter()
        async with http.stream("POST", url, json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                now = time.perf_counter()
                if not json.loads(line[6:])["choices"][0].get("delta", {}).get("content"):
                    continue
                (itl if tokens and last != t0 else ttft).append(now - last)
                last, tokens = now, tokens + 1
    return tokens


def pct(values, q):
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


async def run(url, n_clients, questions, requests, max_tokens, extras=None):
    """Aggregate tokens/s, TTFT p50/p95, ITL p50/p95, and each client's inter-token latencies."""
    extras = extras or [None] * n_clients
    ttft, itls = [], [[] for _ in range(n_clients)]
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=100)) as http:
        t0 = time.perf_counter()
        counts = await asyncio.gather(
            *(client(http, url, questions[i::n_clients][:requests], max_tokens, ttft, itls[i], extras[i])
              for i in range(n_clients))
        )  # fmt: skip
        dt = time.perf_counter() - t0
    itl = [x for one in itls for x in one]
    return sum(counts) / dt, pct(ttft, 50), pct(ttft, 95), pct(itl, 50), pct(itl, 95), itls


# 16 clients: four at r = 2, and deeper fixed r or adaptive exits (capped) for the rest
MIXED = (
    [{"recurrences": 2, "exit": "none"}] * 4
    + [{"recurrences": r, "exit": "none"} for r in (4, 8, 16) * 2]
    + [{"recurrences": 16, "exit": e} for e in ("kl:0.1", "latent:0.2", "argmax:2", "kl:0.01", "cosine:0.01", "kl:0.3")]
)


def depths(url, questions, requests, max_tokens, rounds=1) -> dict:
    """The three scenarios, `rounds` times in turn: this machine's speed drifts within minutes, so the ratio is taken
    within each round and its median reported."""
    n = len(MIXED)
    scenarios = {
        "all r = 2": [{"recurrences": 2, "exit": "none"}] * n,
        "all r = 16": [{"recurrences": 16, "exit": "none"}] * n,
        "mixed r = 2..16 and exits": MIXED,
    }
    print(f"\n{n} clients at different depths ({requests} requests each, up to {max_tokens} tokens, {rounds} rounds)")
    print(f"{'scenario':<28} {'tok/s':>8} {'ITL p50':>8} {'p95':>7} {'r = 2 clients p50':>18}   (ms)")
    out = {label: [] for label in scenarios}
    for _ in range(rounds):
        for label, extras in scenarios.items():
            tps, _, _, i50, i95, itls = asyncio.run(run(url, n, questions, requests, max_tokens, extras))
            shallow = [x for one, e in zip(itls, extras, strict=True) if e["recurrences"] == 2 and e["exit"] == "none"
                       for x in one]  # fmt: skip
            out[label].append({"tok_s": tps, "itl_p50": i50, "itl_p95": i95, "r2_itl_p50": pct(shallow, 50)})
            print(f"{label:<28} {tps:>8.0f} {i50:>8.1f} {i95:>7.1f} {out[label][-1]['r2_itl_p50']:>18.1f}", flush=True)
    mixed, shallow = out["mixed r = 2..16 and exits"], out["all r = 2"]
    ratios = [m["r2_itl_p50"] / a["r2_itl_p50"] for m, a in zip(mixed, shallow, strict=True)]
    out["ratios"] = ratios
    print(f"r = 2 clients' p50 inter-token latency, mixed against all at r = 2: {statistics.median(ratios):.2f}x "
          f"(goal <= 1.5x; per round {', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "miniaxion-0.9m"))
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--clients", default="1,4,16,50")
    p.add_argument("--only", default="clients,depths")
    p.add_argument("--rounds", type=int, default=1, help="depths: the scenarios this many times in turn")
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "recurlm.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(base + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        questions = [ex.prompt for name in SUITE for ex in get_task(name).generate("test", 40)]
        print(machine())
        print(f"{Path(args.checkpoint).name}: {args.requests} requests per client, up to {args.max_tokens} tokens each")
        url = base + "/v1/chat/completions"
        if "clients" in args.only:
            print(f"{'clients':>7} {'tok/s':>8} {'TTFT p50':>9} {'p95':>7} {'ITL p50':>8} {'p95':>7}   (ms)")
            single = None
            for n in map(int, args.clients.split(",")):
                tps, t50, t95, i50, i95, _ = asyncio.run(run(url, n, questions, args.requests, args.max_tokens))
                single = single or tps
                print(f"{n:>7} {tps:>8.0f} {t50:>9.0f} {t95:>7.0f} {i50:>8.1f} {i95:>7.1f}   ({tps / single:.1f}x)")
        if "depths" in args.only:
            depths(url, questions, args.requests, args.max_tokens, args.rounds)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
