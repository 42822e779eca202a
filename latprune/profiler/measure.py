"""Whole-network latency with the profiler's method (:class:`~latprune.profiler.timer.Timer`).

A pruned network's latency is claimed only as its ratio to the dense network timed in the same
rounds (:func:`measure_paired`): on a host whose speed moves by tens of percent for minutes, the
paired ratio repeats within a few percent where raw milliseconds do not.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from latprune.network import Measurement, trace_layers
from latprune.network.quiet_reference import quiet_state_ms
from latprune.profiler.backends import describe_device, get_backend
from latprune.profiler.device import fingerprint
from latprune.profiler.store import ProfileStore, default_db_path, is_server_url
from latprune.profiler.timer import PairedTiming, RoundsRule, Timer


@contextmanager
def _timing(models: Sequence[nn.Module], input_shapes: Sequence[tuple[int, ...]], backend_name: str, warmup: int,
            threads: int | None, global_warmup_s: float, seed: int) -> Iterator[tuple[Timer, list, dict]]:
    """A warmed-up timer with every model prepared on the backend (each for its input shape), and the device
    description."""
    backend = get_backend(backend_name, threads)
    try:
        with tempfile.TemporaryDirectory(prefix="latprune-measure-") as work:
            prepared = []
            for i, (model, input_shape) in enumerate(zip(models, input_shapes, strict=True)):
                layers = list(trace_layers(model, torch.zeros(input_shape)))
                prepared.append(backend.prepare(model, input_shape, layers, Path(work) / f"m{i}.bin"))
            timer = Timer(backend, warmup=warmup, seed=seed)
            timer.warm_up(prepared, global_warmup_s)
            description = backend.description()
            description["fingerprint"] = fingerprint(description)
            yield timer, prepared, description
    finally:
        backend.close()


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
    """Median latency of each model, timed interleaved in ``rounds`` shuffled rounds in one process.

    Returns the measurements (in the order given) and the device description. Claims about one
    model relative to another use :func:`measure_paired`.
    """
    with _timing(models, [input_shape] * len(models), backend_name, warmup, threads, global_warmup_s, seed) as (
            timer, prepared, description):
        return timer.interleaved(prepared, rounds, runs), description


def measure_paired(
    reference: nn.Module,
    models: Sequence[nn.Module],
    input_shape: tuple[int, ...],
    backend_name: str,
    rule: RoundsRule = RoundsRule(),
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    global_warmup_s: float = 5.0,
    seed: int = 0,
    warn: bool = True,
    quiet_ms: float | None = None,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
) -> tuple[PairedTiming, dict]:
    """Each model's latency as its paired ratio to ``reference`` (the dense network), timed in the same shuffled
    rounds until every ratio's 95% interval is within the rule's target or its caps (a one-line warning on
    stderr when a cap came first, with ``warn``); and the device description. ``quiet_ms``: the reference's
    quiet-state time here (:func:`profiled_quiet_ms`), to leave out rounds of the host's slow state.
    ``input_shapes``: each model's own input shape where it differs from the reference's ``input_shape`` (a network
    run at a smaller input size, timed against the dense network at its own)."""
    shapes = [tuple(input_shape)] + [tuple(s) for s in (input_shapes or [input_shape] * len(models))]
    if len(shapes) != len(models) + 1:
        raise ValueError(f"{len(models)} models but {len(shapes) - 1} input shapes")
    with _timing([reference, *models], shapes, backend_name, warmup, threads, global_warmup_s, seed) as (
            timer, prepared, description):
        timing = timer.paired(prepared[0], prepared[1:], runs, rule, quiet_ms=quiet_ms)
    if warn and timing.warning():
        print(timing.warning(), file=sys.stderr)
    return timing, description


def profiled_quiet_ms(db: str | os.PathLike | None, backend_name: str, model_key: str,
                      threads: int | None = None) -> float | None:
    """The quiet-state time of the network ``model_key`` on this machine and backend, from its profile's checks
    (:func:`~latprune.network.quiet_reference.quiet_state_ms`); None without such a profile, or when its checks
    show a host of one state."""
    db = default_db_path() if db is None else db
    if not is_server_url(db) and not Path(db).exists():
        return None
    with ProfileStore(db, readonly=True) as store:
        device_id = store.find_device(fingerprint(describe_device(backend_name, threads)))
        checks = [] if device_id is None else store.drift_checks(device_id, backend_name, model_key)
    return quiet_state_ms(checks)
