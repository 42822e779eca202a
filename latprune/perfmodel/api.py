"""Fit, persist and use the performance model of a device and backend.

The fit reads the profile's timings through the profiler's public store, and is kept
in a file of its own beside the profile (:mod:`latprune.perfmodel.persistence`) with a
hash of those timings and the library versions it was fitted under. Loading it when the
profile has changed or the versions differ refits it (or, with ``refit=False``, refuses
with a clear message): a stale model is never silently used.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import sklearn

import latprune
from latprune.errors import LatpruneError
from latprune.perfmodel.estimator import LayerLatencyModel, NetworkLatencyModel
from latprune.perfmodel.persistence import UnreadableFit, fit_bytes, read_fit_bytes
from latprune.profiler.api import PROFILE_HASH_PREFIX, ProfileStore, describe_device, fingerprint


def library_versions() -> dict:
    return {"latprune": latprune.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@dataclass
class FitSummary:
    backend: str
    device: str
    status: str
    layer_rows: int
    network_rows: int
    alignment_step: int
    chosen: dict
    selection: dict
    overhead: dict
    fit_s: float
    input_shapes: list[list[int]] = field(default_factory=list)  # the whole-network input shapes profiled

    def to_json(self) -> dict:
        return asdict(self)

    def check_input_shape(self, input_shape: Sequence[int], spec: str) -> None:
        """Refuse to predict at an input shape this device's profile never timed: layer times extrapolated to
        another batch or image size can be off many times over (a 1x3x32x32 profile answered 3 ms for a
        64x3x32x32 network that takes 68 ms)."""
        shape = [int(s) for s in input_shape]
        if not self.input_shapes or shape in self.input_shapes:
            return
        profiled = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        wanted = "x".join(map(str, shape))
        raise LatpruneError(f"the {self.backend} profile of this device was taken at input shape {profiled}, not "
                            f"{wanted}: predictions there would extrapolate; profile it first (latprune profile "
                            f"--model {spec} --input-shape {wanted})")


def profiled_input_shapes(store: ProfileStore, device_id: int, backend: str) -> list[list[int]]:
    """The input shapes of the networks timed whole on this device and backend (from their model keys)."""
    shapes = []
    for key in store.model_keys(device_id, backend):
        text = key.rpartition("@")[2]
        try:
            shape = [int(s) for s in text.split("x")]
        except ValueError:
            continue
        if shape not in shapes:
            shapes.append(shape)
    return sorted(shapes)


def device_id_for(store: ProfileStore, backend_name: str, threads: int | None = None,
                  device: str | None = None) -> tuple[int, str]:
    """The stored device ``device`` (a fingerprint; default: this machine, found without starting a
    backend) with a ``backend_name`` profile, or a clear error."""
    key = device or fingerprint(describe_device(backend_name, threads))
    device_id = store.find_device(key)
    if device_id is None or not store.layer_timings(device_id, backend_name):
        whose = f"device {key}" if device else f"this device ({key})"
        hint = "`latprune devices` lists the stored ones" if device else "run `latprune profile` first"
        raise LatpruneError(f"no {backend_name} profile for {whose} in {store.location}; {hint}")
    return device_id, key


def current_perf_model(db, backend: str, threads: int | None = None,
                       device: str | None = None) -> tuple[NetworkLatencyModel, FitSummary]:
    """The up-to-date performance model of ``device`` (default: this machine) and ``backend`` from ``db``."""
    with ProfileStore(db, readonly=True) as store:
        device_id, device = device_id_for(store, backend, threads, device)
        return load_perf_model(store, device_id, backend, device=device)


def fit_perf_model(store: ProfileStore, device_id: int, backend: str, estimator: str = "auto",
                   device: str = "") -> tuple[NetworkLatencyModel, FitSummary]:
    """Fit on the profile rows of ``device_id`` and ``backend``, and keep the fit in the profile store."""
    started = time.time()
    timings = store.layer_timings(device_id, backend)
    if not timings:
        raise LatpruneError(f"no {backend} layer timings to fit in {store.location}; run `latprune profile` first")
    step = int(store.fact(device_id, backend, "alignment_step", 16) or 1)
    signatures = [t.signature for t in timings]
    layers = LayerLatencyModel(estimator=estimator, step=step).fit(signatures, [t.measurement.median_ms for t in timings])
    by_key = {s.key(): s for s in signatures}
    networks = store.network_timings(device_id, backend)
    model = NetworkLatencyModel(layers).fit([
        (n.model_key, [by_key[k] for k in n.layer_signatures.values() if k in by_key], n.measurement.median_ms)
        for n in networks if n.layer_signatures
    ])
    device = device or store.device_fingerprint(device_id)
    summary = FitSummary(backend=backend, device=device, status="fitted", layer_rows=len(timings),
                         network_rows=len(networks), alignment_step=step, chosen=layers.chosen_,
                         selection=layers.selection_, overhead={k: list(v) for k, v in model.overhead_.items()},
                         fit_s=time.time() - started,
                         input_shapes=profiled_input_shapes(store, device_id, backend))
    try:
        store.write_fit(device, backend, fit_bytes(model, store.profile_hash(device_id, backend), library_versions(),
                                                   summary.to_json()))
    except (OSError, LatpruneError) as exc:  # a read-only profile folder: the fit is used, just not kept
        print(f"latprune: the {backend} performance model could not be stored ({exc}); it will be refitted next "
              f"time", file=sys.stderr)
    return model, summary


def load_perf_model(store: ProfileStore, device_id: int, backend: str, refit: bool = True,
                    device: str = "") -> tuple[NetworkLatencyModel, FitSummary]:
    """The stored fit if it is current; otherwise refit it (or refuse when ``refit`` is false)."""
    device = device or store.device_fingerprint(device_id)
    stored, reason = stored_fit(store, device_id, backend, device)
    if stored is not None:
        model, summary = stored
        return model, FitSummary(**{**summary, "status": "loaded",
                                    "input_shapes": profiled_input_shapes(store, device_id, backend)})
    if not refit:
        raise LatpruneError(f"the stored {backend} performance model is stale: {reason}; run `latprune fit`")
    print(f"latprune: refitting the {backend} performance model: {reason}", file=sys.stderr)
    model, summary = fit_perf_model(store, device_id, backend, device=device)
    summary.status = f"refitted: {reason}"
    return model, summary


def fleet(db) -> tuple[str, list[dict]]:
    """The store's location, and its devices and backends: row counts, when last profiled (Unix time), and the
    state of the stored performance model ("current", or why it would be refitted)."""
    with ProfileStore(db, readonly=True) as store:
        devices = []
        for summary in store.summaries():
            fitted, why_not = stored_fit(store, store.find_device(summary.fingerprint), summary.backend,
                                         summary.fingerprint)
            devices.append({**asdict(summary), "fit": "current" if fitted else why_not})
        return store.location, devices


def stored_fit(store: ProfileStore, device_id: int, backend: str,
               device: str) -> tuple[tuple[NetworkLatencyModel, dict] | None, str | None]:
    """((model, summary), None) when the stored fit of ``device`` and ``backend`` is current, else (None, why not)."""
    try:
        stored = read_fit_bytes(store.read_fit(device, backend), store.fit_source(device, backend))
    except (UnreadableFit, OSError) as exc:
        return None, f"the stored fit is unreadable ({exc})"
    if stored is None:
        return None, "no fitted model yet"
    profile_hash, versions, summary, model = stored
    if versions != library_versions():
        changed = sorted(k for k in set(versions) | set(library_versions())
                         if versions.get(k) != library_versions().get(k))
        return None, "fitted under other library versions (" + ", ".join(
            f"{k} {versions.get(k)} -> {library_versions().get(k)}" for k in changed) + ")"
    if not profile_hash.startswith(PROFILE_HASH_PREFIX):
        return None, "fitted by an earlier latprune, which identified the profile another way"
    if profile_hash != store.profile_hash(device_id, backend):
        return None, "the profile changed since the fit"
    return (model, summary), None
