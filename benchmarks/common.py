"""What every benchmark prints first: the machine, and torch's matmul peak on it measured in the same run (so that
figures taken on a busier or quieter moment of a shared CPU can still be compared as a share of the peak)."""

import os
import platform
import statistics
import time

import torch

from recurlm.machine import cpu_has_amx, cpu_has_avx512_bf16, keep_freed_memory

# as recurlm's command line does (recurlm.machine.keep_freed_memory); RECURLM_DEFAULT_MALLOC=1 measures without
ALLOCATOR = (
    "glibc default"
    if os.environ.get("RECURLM_DEFAULT_MALLOC")
    else ("freed memory kept" if keep_freed_memory() else "default (not glibc)")
)


def machine() -> str:
    cpuinfo = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    bf16 = "AVX512-BF16" if cpu_has_avx512_bf16() else "no AVX512-BF16"
    amx = "AMX" if cpu_has_amx() else "no AMX"
    names = [line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, {bf16}, {amx}, torch {torch.__version__}, malloc: {ALLOCATOR}"


def median_time(repeats: int, fn, *args, **kwargs):
    """Median seconds of fn(*args, **kwargs) over the repeats (after a warm-up call), and its last result."""
    out = fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype` (best of the repeats)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_addmm_activation", "mkl::_mkl_linear"}  # the last: frozen


def read_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """GB/s of reading a tensor far larger than the caches (best of the repeats): what batch-1 decoding, which reads
    every weight once per effective layer and token, is bounded by."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def op_profile(fn, label: str, rows: int = 12) -> dict:
    """Run fn under torch.profiler and print where its time goes: the share of matmuls (the only work near the
    peak) and the ops taking the most self time. Returns the total, the matmul share and those ops' self ms."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up, compilation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    print(f"  profile of {label}: {total / 1e3:.1f} ms, matmuls {100 * matmul:.0f}% of it; most self time:")
    for e in top:
        print(f"    {e.key[:60]:<60} {e.self_cpu_time_total / 1e3:8.2f} ms {100 * e.self_cpu_time_total / total:5.1f}%"
              f" x{e.count}")  # fmt: skip
    return {
        "total_ms": total / 1e3,
        "matmul_share": matmul,
        "top_ms": {e.key: e.self_cpu_time_total / 1e3 for e in top},
    }


def timed_attention(model, loss) -> str:
    """`recurlm train`'s choice of the CPU bf16 attention kernel (`choose_attention`), made on a forward and backward
    of `loss`: which it kept, and both timings."""
    from recurlm.training.trainer import choose_attention

    def forward_backward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss().backward()
        model.zero_grad(set_to_none=True)

    times = choose_attention(forward_backward)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items())
    return f"  [bf16 attention {min(times, key=times.get)}: {timings}]"
