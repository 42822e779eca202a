"""How every timing visit warms up before it times anything (imports nothing heavy: the ONNX Runtime worker uses it).

Measured on ort-cpu (2 cores, a fresh timing process per visit): the first 15-25 ms of runs are slow, by 60% for the
dense digits CNN (0.44 against 0.27 ms) and 15% for a pruned copy, so visits of 3 warm-up and 10 timed runs measured
a paired ratio of 0.67-0.71 where visits of 100 runs, and a long-running process, measured 0.94-0.97. The warm-up is
part of the device description: profiles timed with another warm-up are not mixed with these.
"""

from __future__ import annotations

import time
from collections.abc import Callable

VISIT_WARMUP_MS = 40.0


def warm_up_visit(run: Callable[[], object], runs: int, ms: float) -> int:
    """Call ``run`` at least ``runs`` times and for at least ``ms`` milliseconds; the number of calls made."""
    count, began = 0, time.perf_counter()
    while count < runs or (time.perf_counter() - began) * 1e3 < ms:
        run()
        count += 1
    return count
