"""Whole-network latency with the profiler's method: warm-up, shuffled interleaved rounds."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from latprune.profiler.backends import get_backend
from latprune.profiler.device import fingerprint
from latprune.profiler.signature import Measurement
from latprune.profiler.structure import trace_layers


def measure_models(
    models: Sequence[nn.Module],
    input_shape: tuple[int, ...],
    backend_name: str,
    rounds: int = 5,
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    global_warmup_s: float = 5.0,
    seed: int = 0,
) -> tuple[list[Measurement], dict]:
    """Median latency of each model, timed interleaved in shuffled rounds in one process.

    Returns the measurements (in the order given) and the device description. Comparing
    models measured together cancels most of the host's slow drift.
    """
    backend = get_backend(backend_name, threads)
    try:
        with tempfile.TemporaryDirectory(prefix="latprune-measure-") as work:
            prepared = []
            for i, model in enumerate(models):
                layers = list(trace_layers(model, torch.zeros(input_shape)))
                prepared.append(backend.prepare(model, input_shape, layers, Path(work) / f"m{i}.bin"))
            deadline = time.time() + global_warmup_s
            while time.time() < deadline:
                for p in prepared:
                    backend.time(p, warmup=1, runs=2, profiled_runs=0)
            samples: list[list[list[float]]] = [[] for _ in prepared]
            order = list(range(len(prepared)))
            rng = random.Random(seed)
            for _ in range(rounds):
                rng.shuffle(order)
                for i in order:
                    samples[i].append(backend.time(prepared[i], warmup, runs, profiled_runs=0).plain_ms)
            description = backend.description()
    finally:
        backend.close()
    description["fingerprint"] = fingerprint(description)
    return [Measurement.from_samples(s) for s in samples], description
