"""The one timing method: a global warm-up, then rounds that visit the networks in a new shuffled
order each, every visit being a few warm-up runs and then timed runs. Raw samples are kept.

The profiler, ``measure``, ``validate`` and the benchmarks all time through :class:`Timer`:
shuffling per round spreads the host's slow drifts over every network instead of biasing
some, and timing networks interleaved in one process makes their ratios trustworthy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TypeVar

from latprune.network import Measurement
from latprune.profiler.backends import Backend, Prepared, RoundSample

T = TypeVar("T")


class Timer:
    """Times prepared networks on one backend; ``warmup`` runs precede every timed visit."""

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
        """One visit: warm-up runs, ``profiled_runs`` per-layer runs, ``runs`` plain whole-network runs."""
        return self.backend.time(prepared, self.warmup, runs, profiled_runs)

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
