"""The dense network's quiet-host time, and how much slower a round ran than that.

The profiler and the closed loop divide each round's layer times by how much slower than its
quiet time the dense network ran beside them, so a slow minute does not become a slow layer;
paired ratios count only the rounds near it (:func:`~latprune.network.measurement.quiet_rounds`).
Measured on the 2-core AVX2 host: each timing visit (a fresh ONNX Runtime worker process) of cifar
resnet20 runs either at about 0.82 ms or, in about one visit in seven, at 0.62 ms, independently of
the visits before and after it. With the fastest check as the quiet time, every variant timed after
one fast check was stored 1.3x too fast (the closed loop then measured resnet20 plans 49-62% over
their predictions, and the README's `plan --speedup 2` failed), and a fast check says nothing about
the visits after it. So the quiet time is the lower quartile of the checks
(slow spells, even half of the time, stay out of it; a fast minority changes nothing), and a
round is only ever scaled down for running slow, never up for a fast check.

The 2-core AVX-512 host runs ONNX Runtime's two threads in one of two states, switching every 10-60 s with no
other process running and no steal time: EfficientNet-Lite0 at 4.6 ms or at 7.5 ms (one thread: 8.5 ms in both),
46% of its 195 stored checks in the slow state, resnet56 14% at 1.43x. The states slow a network and its pruned
copies unlike each other (Lite0 kept at 0.6 per group: 0.52 of dense in the quiet state, 0.65 in the slow one), so
a paired ratio does not cancel them: timings compare only within the quiet state (:func:`in_quiet_state`).
"""

from __future__ import annotations

from collections.abc import Iterable

QUIET_QUANTILE = 0.25
# A round whose dense time is within this factor of the quiet time ran in the host's quiet state. Within a state
# the checks spread up to 1.1x (75th percentile 1.01-1.06x); the slow state ran resnet20 1.18x, resnet56 1.43x
# and Lite0 1.62x slower.
QUIET_STATE_FACTOR = 1.15
# The checks show a host of two states when at least this share of them ran slower than that (not one outlier).
MIN_SLOW_SHARE = 0.05


def quiet_reference_ms(checks: Iterable[float]) -> float:
    """The quiet-host time of the dense network from its timed checks (ms): their lower quartile (nearest rank:
    the second fastest of three, the fastest of one or two)."""
    ordered = sorted(float(c) for c in checks)
    if not ordered:
        raise ValueError("no timed checks of the dense network")
    return ordered[int(QUIET_QUANTILE * (len(ordered) - 1) + 0.5)]


def slowdown_factor(check_ms: float, quiet_ms: float) -> float:
    """How much slower than quiet a round ran, judged by the dense network's time in it: at least 1."""
    return max(1.0, check_ms / quiet_ms)


def in_quiet_state(check_ms: float, quiet_ms: float | None) -> bool:
    """Whether a round whose dense network took ``check_ms`` ran in the host's quiet state (always, without a
    quiet time to judge by)."""
    return quiet_ms is None or check_ms <= QUIET_STATE_FACTOR * quiet_ms


def quiet_state_ms(checks: Iterable[float]) -> float | None:
    """The dense network's quiet-state time when its checks show the host running in two states (at least
    :data:`MIN_SLOW_SHARE` of them slower than :data:`QUIET_STATE_FACTOR` times the quiet time); None when they
    show one (a host uniformly slower than its profile is a changed host, not a slow state, and is not waited
    out)."""
    checks = [float(c) for c in checks]
    if not checks:
        return None
    quiet = quiet_reference_ms(checks)
    slow = sum(not in_quiet_state(c, quiet) for c in checks)
    return quiet if slow >= MIN_SLOW_SHARE * len(checks) and slow > 1 else None
