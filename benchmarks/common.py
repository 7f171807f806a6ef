"""What every benchmark prints first: the machine, and torch's matmul peak on it measured in the same run (so that
figures taken on a busier or quieter moment of a shared CPU can still be compared as a share of the peak)."""

import platform
import time

import torch


def machine() -> str:
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, {bf16}, {amx}, torch {torch.__version__}"


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
