"""The CPU's vector instruction sets, read from Linux's /proc/cpuinfo (no torch, no onnx): what ONNX
Runtime's int8 and bf16 kernels can use here."""

from __future__ import annotations

import platform

# x86 instructions that multiply uint8 by int8 and sum in 32 bits (VPDPBUSD and AMX tiles). Without
# them ONNX Runtime's x86 int8 GEMM (AVX2 VPMADDUBSW) sums pairs of products in 16 bits, which
# saturate for full-range 8-bit weights.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# The int8 variant's weight range: auto (8-bit where the sums do not saturate, see int8_saturates) or fixed.
INT8_WEIGHTS = ("auto", "8bit", "7bit")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's vector instruction sets (avx*, amx*, sse4*, fma, f16c), sorted; [] where unknown."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration, IndexError):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "sse4")) or f in ("fma", "f16c"))


def int8_saturates(flags: list[str] | None = None, machine: str | None = None) -> bool | None:
    """Whether ONNX Runtime's int8 GEMM here can saturate on full-range 8-bit weights: True on an
    x86 CPU without VNNI, False with it or on another architecture, None when the x86 flags are unknown."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    return not any(f in flags for f in VNNI_FLAGS)
