"""A noisy host on demand: background processes that load the CPU in random spells.

Issue #26 asks for its latency rules to hold "on a host as noisy as" the one it was filed on (the same
network 1.7-2.7 ms in three processes in a row, 50-90% spread inside one), and hosts are not noisy on
request. ``noisy_host`` makes one reproducibly: each worker process alternates a busy spell (spinning
on a core) and an idle spell, their lengths drawn from a seeded generator, so the timed code shares
its cores for seconds at a time, as it does beside a noisy neighbour. Benchmarks take ``--noise``
and record the spec with their results; without it nothing runs beside them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

NOISE_LEVELS = ("none", "spells")


@dataclass(frozen=True)
class NoiseSpec:
    """How many workers, the ranges their busy and idle spells are drawn from (seconds), and the share of
    each ``slice_s`` a busy worker spins (the rest it sleeps): 1 takes a core whole, less slows a neighbour
    less."""

    workers: int = 1
    busy_s: tuple[float, float] = (0.5, 8.0)
    idle_s: tuple[float, float] = (0.5, 4.0)
    duty: float = 0.3
    slice_s: float = 0.005
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"host noise on: {self.workers} worker(s) loading a core {100 * self.duty:.0f}% of the time in busy "
                f"spells of {self.busy_s[0]:g}-{self.busy_s[1]:g} s between idle spells of "
                f"{self.idle_s[0]:g}-{self.idle_s[1]:g} s (seed {self.seed})")


def add_noise_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--noise", choices=NOISE_LEVELS, default="none",
                        help="run on a host made noisy on purpose (spells: CPU load in random spells; default none)")


def noise_spec(level: str) -> NoiseSpec | None:
    """The spec a benchmark's ``--noise`` level stands for; None for a quiet run."""
    if level not in NOISE_LEVELS:
        raise ValueError(f"unknown noise level {level!r}: one of {', '.join(NOISE_LEVELS)}")
    return None if level == "none" else NoiseSpec()


def _spin_in_spells(spec: NoiseSpec, seed: int) -> None:
    draw = random.Random(seed)
    spin_s, rest_s = spec.duty * spec.slice_s, (1 - spec.duty) * spec.slice_s
    while True:
        until = time.monotonic() + draw.uniform(*spec.busy_s)
        while (now := time.monotonic()) < until:
            while time.monotonic() < now + spin_s:
                pass
            if rest_s > 0:
                time.sleep(rest_s)
        time.sleep(draw.uniform(*spec.idle_s))


@contextmanager
def noisy_host(spec: NoiseSpec | None) -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """Run the body with ``spec``'s workers loading the CPU (none when ``spec`` is None); yields the worker
    processes, and stops them on the way out, whatever the body raised."""
    if spec is None:
        yield []
        return
    context = multiprocessing.get_context("spawn")  # no copy of the benchmark's torch state in the workers
    workers = [context.Process(target=_spin_in_spells, args=(spec, spec.seed + i), daemon=True)
               for i in range(spec.workers)]
    for worker in workers:
        worker.start()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
