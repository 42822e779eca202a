"""The one timing method: a global warm-up, then rounds that visit the networks in a new shuffled
order each, every visit being a few warm-up runs and then timed runs. Raw samples are kept.

The profiler, ``measure``, ``validate`` and the benchmarks all time through :class:`Timer`:
shuffling per round spreads the host's slow drifts over every network instead of biasing
some, and timing networks interleaved in one process makes their ratios trustworthy.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from latprune.errors import LatpruneError
from latprune.network import Measurement, PairedRatio, paired_interval
from latprune.network.quiet_reference import in_quiet_state
from latprune.profiler.backends import Backend, Prepared, RoundSample
from latprune.profiler.visit_warmup import VISIT_WARMUP_MS

T = TypeVar("T")

SLOW_STATE_PATIENCE_S = 60.0  # how long past the rule's time cap a paired timing waits for the quiet state
LEFT_OUT_ROUNDS_FACTOR = 3  # rounds left out (slow state, contention) are re-run up to this many times the rule's


@dataclass(frozen=True)
class RoundsRule:
    """How many rounds a paired measurement takes: at least ``min_rounds``, then until every network's ratio to
    the reference has a 95% interval within +-``target`` (0.015: +-1.5%), or ``max_rounds`` or ``max_seconds``."""

    min_rounds: int = 10
    max_rounds: int = 60
    max_seconds: float = 120.0
    target: float = 0.015

    def __post_init__(self) -> None:
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise LatpruneError(f"rounds: need 2 <= min_rounds <= max_rounds, got {self.min_rounds}, "
                                f"{self.max_rounds}")
        if not (self.max_seconds > 0 and 0 < self.target < 1):
            raise LatpruneError(f"rounds: max_seconds must be positive and target in (0, 1), got "
                                f"{self.max_seconds}, {self.target}")

    def waited_out(self, rounds: int, seconds: float) -> bool:
        """Whether a timing that is still short of counted rounds has waited long enough: the rule's rounds
        :data:`LEFT_OUT_ROUNDS_FACTOR` times over, or :data:`SLOW_STATE_PATIENCE_S` past its time cap."""
        return rounds >= LEFT_OUT_ROUNDS_FACTOR * self.max_rounds or seconds >= self.max_seconds + SLOW_STATE_PATIENCE_S


@dataclass(frozen=True)
class PairedTiming:
    """A reference network and others timed in the same shuffled rounds, each other one as its paired ratio
    to the reference; ``converged``: every interval reached the rule's target before its caps."""

    reference: Measurement
    networks: tuple[Measurement, ...]
    ratios: tuple[PairedRatio, ...]
    converged: bool
    seconds: float
    slow_state_rounds: int = 0  # rounds left out because the host ran in its slow state
    settled: bool = True  # false: the host never left its slow state, and every round counts

    def derived_ms(self, index: int) -> float:
        """Network ``index``'s latency as its ratio times the reference's median over the rounds counted."""
        return self.ratios[index].ratio * self.reference.median_ms

    def widest(self) -> PairedRatio:
        return max(self.ratios, key=lambda r: r.half_width)

    def warning(self) -> str | None:
        """One line for a host too noisy for the rule (None when the intervals reached their target)."""
        if not self.settled:
            return (f"latprune: warning: the host stayed in its slow state for {self.seconds:.0f} s (ONNX Runtime's "
                    f"threads slowed; the ratios are that state's, not the quiet one's): measure again later")
        if self.converged:
            return None
        widest = self.widest()
        return (f"latprune: warning: the host is noisy: after {len(self.reference.rounds)} rounds "
                f"({self.seconds:.0f} s; {widest.rounds} of them quiet) a ratio is known to "
                f"+-{100 * widest.half_width:.1f}% only (reference round spread {100 * self.reference.spread:.0f}%)")


class Timer:
    """Times prepared networks on one backend; at least ``warmup`` runs and :data:`VISIT_WARMUP_MS` of running
    precede every timed visit (the fingerprint records that warm-up, so it is not a setting)."""

    def __init__(self, backend: Backend, warmup: int = 3, seed: int = 0):
        self.backend, self.warmup = backend, warmup
        self._rng = random.Random(seed)

    def warm_up(self, prepared: Sequence[Prepared], seconds: float) -> None:
        """Keep the backend busy with ``prepared`` for ``seconds``: clocks and caches settle only under load."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            for p in prepared:
                self.backend.time(p, warmup=1, runs=2, profiled_runs=0)

    def sample(self, prepared: Prepared, runs: int, profiled_runs: int = 0) -> RoundSample:
        """One visit: the warm-up, ``profiled_runs`` per-layer runs, ``runs`` plain whole-network runs."""
        return self.backend.time(prepared, self.warmup, runs, profiled_runs, warmup_ms=VISIT_WARMUP_MS)

    def shuffled(self, items: Sequence[T]) -> list[T]:
        """``items`` in this round's order (a new shuffle each call, reproducible from the seed)."""
        order = list(items)
        self._rng.shuffle(order)
        return order

    def interleaved(self, prepared: Sequence[Prepared], rounds: int, runs: int) -> list[Measurement]:
        """Whole-network latency of each network, timed in ``rounds`` shuffled rounds (order as given)."""
        samples: list[list[list[float]]] = [[] for _ in prepared]
        for _ in range(rounds):
            for i in self.shuffled(range(len(prepared))):
                samples[i].append(self.sample(prepared[i], runs).plain_ms)
        return [Measurement.from_samples(s) for s in samples]

    def paired(self, reference: Prepared, others: Sequence[Prepared], runs: int,
               rule: RoundsRule = RoundsRule(), quiet_ms: float | None = None) -> PairedTiming:
        """Time ``reference`` and ``others`` in shuffled rounds until every other's ratio to the reference is
        known to the rule's target (95% interval of the median per-round ratio), or the rule's caps.

        ``quiet_ms``: the reference's quiet-state time on this device (its profile's checks), when known. Rounds
        in which the reference ran slower than that state (:func:`in_quiet_state`) are left out, and the rounds
        go on for up to :data:`SLOW_STATE_PATIENCE_S` past the cap to wait that state out; if it never ends,
        every round counts and the timing says so (``settled`` false)."""
        began = time.perf_counter()
        samples: list[list[list[float]]] = [[] for _ in range(len(others) + 1)]
        networks = [reference, *others]
        while True:
            for i in self.shuffled(range(len(networks))):
                samples[i].append(self.sample(networks[i], runs).plain_ms)
            rounds, seconds = len(samples[0]), time.perf_counter() - began
            kept = [k for k, r in enumerate(samples[0]) if in_quiet_state(statistics.median(r), quiet_ms)]
            in_state = len(kept)
            waited_out = rule.waited_out(rounds, seconds)
            if in_state < rule.min_rounds:
                if not waited_out or rounds < rule.min_rounds:
                    continue
                kept = list(range(rounds))  # the slow state never ended: every round counts
            measured = [Measurement.from_samples([s[k] for k in kept]) for s in samples]
            ratios = tuple(paired_interval(m, measured[0]) for m in measured[1:])
            converged = all(r.covered and r.half_width <= rule.target for r in ratios)
            if converged or len(kept) >= rule.max_rounds or seconds >= rule.max_seconds or waited_out:
                return PairedTiming(measured[0], tuple(measured[1:]), ratios, converged, seconds,
                                    slow_state_rounds=rounds - in_state, settled=in_state >= rule.min_rounds)
