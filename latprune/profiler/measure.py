"""Whole-network latency with the profiler's method (:class:`~latprune.profiler.timer.Timer`)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from latprune.profiler.backends import get_backend
from latprune.profiler.device import fingerprint
from latprune.network import Measurement
from latprune.profiler.timer import Timer
from latprune.network import trace_layers


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
            timer = Timer(backend, warmup=warmup, seed=seed)
            timer.warm_up(prepared, global_warmup_s)
            measurements = timer.interleaved(prepared, rounds, runs)
            description = backend.description()
    finally:
        backend.close()
    description["fingerprint"] = fingerprint(description)
    return measurements, description
