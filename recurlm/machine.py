"""What this CPU can do, read once from /proc/cpuinfo: kernels are chosen by it (docs/design.md §1) where a choice
measured faster on one kind of CPU was slower on another."""

from pathlib import Path


def _read_flags() -> frozenset[str]:
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


# read once, at import: a constant to torch.compile too (a cached function call would break its graph)
FLAGS = _read_flags()


def _flags(cpuinfo: str | None) -> frozenset[str]:
    return FLAGS if cpuinfo is None else frozenset(cpuinfo.split())


def cpu_has_avx512_bf16(cpuinfo: str | None = None) -> bool:
    return "avx512_bf16" in _flags(cpuinfo)


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has AMX tiles for bf16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in _flags(cpuinfo)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AMX or AVX512-BF16)."""
    return cpu_has_amx(cpuinfo) or cpu_has_avx512_bf16(cpuinfo)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing large blocks back to the kernel: training
    allocates and frees tensors of tens of MB at every step (the logits, their gradient), and each fresh mapping is
    paid for again in page faults. 1.15-1.2x faster bf16 training steps of the reference setting on a 2-core Xeon
    (`benchmarks/against_fork.py`, with and without RECURLM_DEFAULT_MALLOC=1). Returns whether it took (not glibc:
    False)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
        return bool(libc.mallopt(mmap_threshold, 1 << 30)) and bool(libc.mallopt(trim_threshold, 1 << 34))
    except (OSError, AttributeError):
        return False
