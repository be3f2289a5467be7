"""The CPU this runs on, as the runtimes see it: its name, the vector extensions that pick their kernels,
and the channel block ONNX Runtime's convolutions work in. Torch-free (the command line reads it).

Runtimes choose kernels, and even precisions, by instruction set: ONNX Runtime's convolutions (MLAS)
run on blocks of 8 channels with AVX2 and 16 with AVX-512F (its ``NchwcBlockSize``); OpenVINO runs fp32
models in bf16 by default where the CPU has native bf16 (AVX512_BF16, AMX), which metavote never lets it
do unasked (:class:`metavote.deploy.OpenVinoModel`). Every latency figure should name the CPU: :func:`cpu_name`.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and its feature flags, from ``/proc/cpuinfo`` (elsewhere: the platform's name, no flags)."""
    name, flags = platform.processor() or platform.machine() or "unknown CPU", frozenset()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():  # the first processor's block is enough
                break
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
    return name, flags


def cpu_name() -> str:
    """The CPU's model and the vector extensions that pick kernels, in one line: ``AMD EPYC, avx2 avx512f avx512_vnni avx512_bf16``."""
    name, flags = cpu_info()
    shown = [f for f in SHOWN if f in flags]
    return f"{name}, {' '.join(shown) or 'no AVX2'}"


def channel_block() -> int:
    """The channel block of ONNX Runtime's CPU convolutions here: 16 with AVX-512F, else 8 (AVX2, and
    the multiple that also suits ARM's 4-lane NEON kernels twice over). ``prune --align auto`` uses it."""
    return 16 if "avx512f" in cpu_info()[1] else 8
