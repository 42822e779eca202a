"""Keep large tensor buffers in the process heap for reuse instead of mapping them afresh (glibc only).

glibc serves every allocation above its mmap threshold (32 MB at most) with a fresh memory mapping
and unmaps it when freed, so each large activation tensor of a batch costs page faults every time
it is made. On 2 cores a batch of 100 ImageNet photos through EfficientNet-Lite0 took 5.5 s that
way (most of the process's time in the kernel), 2.2 s with the buffers kept. Calibration scoring,
the damage table, recovery and evaluation all run such batches. ONNX Runtime's timing is
unaffected (it keeps its own arena) and so are batch-1 tensors (below the threshold either way).
"""

from __future__ import annotations

import ctypes
import platform
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
KEPT_BYTES = 1 << 30  # buffers up to this size come from (and return to) the heap

_applied: bool | None = None


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`KEPT_BYTES` (once per process). False where the C
    library is not glibc or refuses (nothing changes then)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BYTES)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES))
            except (OSError, AttributeError):
                _applied = False
    return _applied
