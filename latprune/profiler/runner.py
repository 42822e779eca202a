"""Profile a model on a backend: time pruned variants whole and per layer, into the store.

Method (see issue #3): one engine per process; a short global warm-up; every variant is
timed in several rounds, each round visiting the variants in a new shuffled order (so slow
drifts spread over all variants instead of biasing some); each round of each variant is
committed at once, so an interrupted run resumes where it stopped; a variant whose round
medians disagree by more than ``retime_spread`` gets extra rounds. The dense network is
re-timed (and recorded) at the start of every round and after every ``reference_every``
variant visits; the visits between two checks are kept only when both checks ran at the dense
network's quiet time, else they are timed again (:mod:`~latprune.profiler.quiet_visits`): a slow
minute of the host does not become a slow layer, and the profile holds the layer times of a quiet host.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latprune.analysis import ModelAnalysis, as_analysis
from latprune.errors import LatpruneError
from latprune.models import LoadedModel
from latprune.profiler.alignment import detect_alignment_step
from latprune.profiler.backends import Backend, Prepared, RoundSample, get_backend
from latprune.profiler.device import fingerprint
from latprune.profiler.quiet_visits import QuietVisits, VisitCounts
from latprune.network import LayerInfo, LayerSignature, Measurement, layer_signatures, model_key
from latprune.profiler.store import NetworkTiming, ProfileStore
from latprune.profiler.timer import Timer
from latprune.profiler.variants import Variant, design_variants
from latprune.surgery import prune_channels

@dataclass(frozen=True)
class ProfileSettings:
    widths: int = 32  # candidate widths per group
    variants: int = 64  # pruned variants (each layer sees up to this many width pairs)
    rounds: int = 3
    runs: int = 8  # plain whole-network runs per round
    profiled_runs: int = 8  # per-layer runs per round
    warmup: int = 3
    min_round_ms: float = 60.0  # fast networks get more runs so a round lasts at least this long
    step: int = 16  # grid of "hardware-friendly" widths
    retime_spread: float = 0.05
    max_extra_rounds: int = 2
    anchors: int = 4  # variants always timed whole, even when every layer is already known
    reference_every: int = 8  # the dense network is re-timed after this many variant visits to normalise them
    global_warmup_s: float = 5.0  # measured here: timings settle only after ~5 s of steady load
    # Variants claimed and timed together: profilers of one device sharing a store split the work in such batches.
    claim_batch: int = 16
    seed: int = 0


@dataclass
class ProfileReport:
    model: str
    backend: str
    device: str
    db: str
    variants_planned: int
    variants_timed: int
    variants_reused: int
    variants_already_done: int
    variants_by_others: int  # timed by another profiler of this device sharing the work
    new_layer_rows: int
    layer_rows: int
    alignment_step: int  # detected, or the configured grid step when detection was inconclusive
    alignment_detected: bool
    alignment_scores: dict
    noise_round_spread: float
    noise_p10_p90: float
    drift: float
    visits_retimed: int  # visits timed again because the dense network beside them ran slower than quiet
    visits_kept_loaded: int  # visits kept, scaled by the dense slowdown, after every try ran loaded
    wall_s: float
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


INITIAL_CHECKS = 3  # dense checks before the first variant visit
# The profiler's own cost per profiled node, at most: measured 1.6-8.2 us per node on EfficientNet-Lite0 (ort-cpu,
# 2-core AVX-512 host, 12 visits whose plain and profiled runs ran in one state); a visit whose profiled runs fell in
# the host's slow state (Lite0 7.9 ms against 4.8 ms) shows about 60 us per node.
MAX_NODE_OVERHEAD_MS = 0.010


@dataclass
class _Job:
    variant: Variant
    prepared: Prepared
    signatures: dict[str, LayerSignature]
    rounds: dict[int, dict]
    new_rows: int = 0

    def spread(self) -> float:
        return Measurement.from_samples([r["plain_ms"] for r in self.rounds.values()]).spread


def _progress(iterable=None, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def profile_model(
    model: LoadedModel | ModelAnalysis,
    backend_name: str,
    db: str | Path | None = None,
    settings: ProfileSettings = ProfileSettings(),
    threads: int | None = None,
    progress: bool = True,
) -> ProfileReport:
    """Profile a model on ``backend_name`` into the database ``db`` (resuming if interrupted)."""
    started = time.time()
    analysis = as_analysis(model)
    backend = get_backend(backend_name, threads)
    try:
        with ProfileStore(db) as store:
            return _profile(analysis, backend, store, settings, progress, started)
    finally:
        backend.close()


def _profile(analysis: ModelAnalysis, backend: Backend, store: ProfileStore, settings: ProfileSettings,
             progress: bool, started: float) -> ProfileReport:
    description = backend.description()
    device = fingerprint(description)
    device_id = store.device_id(device, description)
    loaded, key, layers = analysis.loaded, analysis.key, analysis.layers
    x = loaded.example_input()
    variants = design_variants(analysis.groups, settings.widths, settings.variants, settings.step, settings.seed,
                               branches=analysis.branches)

    refuse_another_network(store, device_id, backend.name, loaded, layers, variants[0].key)
    known_elsewhere = store.known_signatures(device_id, backend.name, exclude_model=key)
    done = store.finished_variants(device_id, backend.name, key)
    todo = [(index, v) for index, v in enumerate(variants) if v.key not in done]
    timed, reused, deferred = [], 0, []
    drift, counts = 0.0, VisitCounts()
    try:
        with tempfile.TemporaryDirectory(prefix="latprune-profile-") as work:
            reference = None
            while todo:
                jobs: list[_Job] = []
                later = []  # past this batch: claimed and timed in the next one
                for index, variant in _progress(todo, desc="prepare variants", unit="variant",
                                                disable=not progress):
                    if len(jobs) >= settings.claim_batch:
                        later.append((index, variant))
                        continue
                    model = prune_channels(loaded.model, x, analysis.groups, variant.kept(analysis.groups),
                                           branches=analysis.branches)
                    variant_layers = analysis.layers_of(model)
                    signatures = layer_signatures(model, variant_layers, loaded.input_shape[0], backend.name)
                    if index >= settings.anchors and all(s.key() in known_elsewhere for s in signatures.values()):
                        reused += 1
                        continue
                    if not store.claim(device_id, backend.name, key, variant.key):
                        deferred.append((index, variant))  # another profiler of this device is timing it
                        continue
                    prepared = backend.prepare(model, loaded.input_shape, list(variant_layers),
                                               Path(work) / f"{variant.key}.bin")
                    pending = store.pending_rounds(device_id, backend.name, key, variant.key)
                    jobs.append(_Job(variant, prepared, signatures, pending.get(variant.key, {})))
                if jobs:
                    warmup_s = settings.global_warmup_s if reference is None else 0.0
                    if reference is None:
                        dense = variants[0]  # design_variants puts the dense network first
                        reference = next((j.prepared for j in jobs if j.variant.key == dense.key), None) or \
                            backend.prepare(loaded.model, loaded.input_shape, list(layers), Path(work) / "reference.bin")
                    drift = max(drift, _time_jobs(jobs, reference, backend, store, device_id, key, settings,
                                                  progress, warmup_s, counts))
                    timed += jobs
                if later:
                    todo = later
                else:
                    todo, deferred = _await_others(store, device_id, backend.name, key, deferred, progress)
    finally:
        store.release_claims()

    timings = [(t.signature, t.measurement.median_ms) for t in store.layer_timings(device_id, backend.name)]
    detected, scores = detect_alignment_step(timings)
    step = detected if detected is not None else settings.step
    store.set_fact(device_id, backend.name, "alignment_step", step)
    store.set_fact(device_id, backend.name, "alignment_detected", detected is not None)
    networks = store.network_timings(device_id, backend.name, key)
    return ProfileReport(
        model=key,
        backend=backend.name,
        device=device,
        db=store.location,
        variants_planned=len(variants),
        variants_timed=len(timed),
        variants_reused=reused,
        variants_already_done=len(done),
        variants_by_others=len(variants) - len(done) - reused - len(timed),
        new_layer_rows=sum(j.new_rows for j in timed),
        layer_rows=len(timings),
        alignment_step=step,
        alignment_detected=detected is not None,
        alignment_scores={str(k): round(v, 5) for k, v in scores.items()},
        noise_round_spread=statistics.median([n.measurement.spread for n in networks]) if networks else 0.0,
        noise_p10_p90=statistics.median(
            [(n.measurement.p90_ms - n.measurement.p10_ms) / n.measurement.median_ms for n in networks]
        ) if networks else 0.0,
        drift=drift,
        visits_retimed=counts.retimed,
        visits_kept_loaded=counts.kept_loaded,
        wall_s=time.time() - started,
        settings=asdict(settings),
    )


def refuse_another_network(store: ProfileStore, device_id: int, backend: str, dense: LoadedModel,
                           layers: dict[str, LayerInfo], dense_variant: str) -> None:
    """Refuse to add to (or time against) a model's whole-network timings that another network made under the same
    spec and input shape (its factory's code changed, e.g. padding now computed for the input size): mixed, they
    would be read as one network's by the performance model and the closed loop. ``layers``: ``dense``'s, traced at
    its input shape; ``dense_variant``: the key its timing is stored under."""
    key = model_key(dense)
    signatures = layer_signatures(dense.model, layers, dense.input_shape[0], backend)
    stored = next((n.layer_signatures for n in store.network_timings(device_id, backend, key)
                   if n.variant_key == dense_variant and n.layer_signatures), None)
    now = {layer: signature.key() for layer, signature in signatures.items()}
    if stored is None or stored == now:
        return
    differ = sorted(layer for layer in stored.keys() | now.keys() if stored.get(layer) != now.get(layer))
    raise LatpruneError(
        f"the profile database {store.location} holds {backend} timings of {key} made from another network: "
        f"{len(differ)} of its layers differ from this one's (first: {differ[0]}), so the model's code has changed "
        f"since it was profiled; give a new --db for this model")


def _time_jobs(jobs: list[_Job], reference: Prepared, backend: Backend, store: ProfileStore, device_id: int,
               key: str, settings: ProfileSettings, progress: bool, warmup_s: float, counts: VisitCounts) -> float:
    """Run the rounds, each variant visit kept only between two quiet checks of the dense ``reference``
    (:mod:`~latprune.profiler.quiet_visits`; how the host's load changed the visits is added to ``counts``);
    returns the largest relative drift of the reference from its first recorded time."""
    timer = Timer(backend, warmup=settings.warmup, seed=settings.seed)
    timer.warm_up([reference], warmup_s)

    def reference_ms() -> float:
        """Re-time the dense reference."""
        return statistics.median(timer.sample(reference, runs=2 * settings.runs).plain_ms)

    # Its checks are recorded: the quiet reference of later runs and loops too.
    visits = QuietVisits(reference_ms, store.drift_checks(device_id, backend.name, key), settings.reference_every,
                         record=lambda ms: store.record_drift_check(device_id, backend.name, key, ms), counts=counts)
    for _ in range(INITIAL_CHECKS - 1):  # with the first bracket's own check: a quiet time no single visit sets
        visits.bounding_check()
    runs, profiled_runs = _round_runs(settings, visits.checks[-1])
    finished: set[str] = set()
    total = sum(max(0, settings.rounds - len(j.rounds)) for j in jobs)
    with _progress(total=total, desc=f"profile {backend.name}", unit="run", disable=not progress) as bar:
        for round_index in range(settings.rounds + settings.max_extra_rounds):
            todo = [
                j for j in jobs
                if j.variant.key not in finished and round_index not in j.rounds
                and (round_index < settings.rounds or j.spread() > settings.retime_spread)
            ]
            if round_index >= settings.rounds:
                bar.total += len(todo)

            def keep(job: _Job, sample: RoundSample) -> None:
                job.rounds[round_index] = sample.to_json()
                store.save_round(device_id, backend.name, key, job.variant.key, round_index, job.rounds[round_index])
                complete = len(job.rounds) >= settings.rounds
                if complete and (job.spread() <= settings.retime_spread
                                 or len(job.rounds) >= settings.rounds + settings.max_extra_rounds):
                    job.new_rows = _finish(job, store, device_id, backend.name, key)
                    finished.add(job.variant.key)
                bar.update(1)

            visits.visit(timer.shuffled(todo), lambda job: timer.sample(job.prepared, runs, profiled_runs), keep)
        for job in jobs:  # jobs still above the spread limit after all extra rounds
            if job.variant.key not in finished:
                job.new_rows = _finish(job, store, device_id, backend.name, key)
    checks = store.drift_checks(device_id, backend.name, key)
    return max(abs(c / checks[0] - 1) for c in checks)


def _await_others(store: ProfileStore, device_id: int, backend: str, key: str, deferred: list[tuple[int, Variant]],
                  progress: bool, poll_s: float = 2.0) -> tuple[list[tuple[int, Variant]], list[tuple[int, Variant]]]:
    """Wait while other profilers time the ``deferred`` variants. Returns (those whose claim lapsed, now this
    profiler's to time; those still with their profilers), or two empty lists once every one is finished."""
    if deferred and progress:
        print(f"latprune: {len(deferred)} variants are being timed by another profiler of this device; waiting for "
              "them", file=sys.stderr)
    while deferred:
        finished = store.finished_variants(device_id, backend, key)
        deferred = [(i, v) for i, v in deferred if v.key not in finished]
        lapsed = [(i, v) for i, v in deferred if store.claim(device_id, backend, key, v.key)]
        if lapsed:  # claimed now (claiming them again when they are prepared just renews the claim)
            return lapsed, [item for item in deferred if item not in lapsed]
        if deferred:
            time.sleep(poll_s)
    return [], []


def _round_runs(settings: ProfileSettings, network_ms: float) -> tuple[int, int]:
    """(plain, profiled) runs per visit: more for fast networks, so a visit lasts ``min_round_ms``."""
    scale = max(1.0, settings.min_round_ms / max(network_ms, 1e-3) / (settings.runs + settings.profiled_runs))
    return round(settings.runs * scale), round(settings.profiled_runs * scale)


def _finish(job: _Job, store: ProfileStore, device_id: int, backend: str, key: str) -> int:
    """Summarise a variant's rounds and commit it (layers and whole network) at once."""
    samples = [RoundSample.from_json(job.rounds[r]) for r in sorted(job.rounds)]
    whole = Measurement.from_samples([s.plain_ms for s in samples])
    per_layer: dict[str, list[list[float]]] = defaultdict(list)
    for sample in samples:
        for layer, runs in _corrected_segments(sample).items():
            per_layer[layer].append(runs)
    layers_ms = {layer: statistics.median([t for r in rounds for t in r])
                 for layer, rounds in per_layer.items() if layer}
    by_signature: dict[LayerSignature, list[list[float]]] = defaultdict(list)
    for layer, rounds in per_layer.items():
        if layer:
            by_signature[job.signatures[layer]].extend(rounds)
    network = NetworkTiming(
        model_key=key,
        variant_key=job.variant.key,
        widths=job.variant.widths,
        measurement=whole,
        layers_ms=layers_ms,
        remainder_ms=whole.median_ms - sum(layers_ms.values()),
        layer_signatures={layer: sig.key() for layer, sig in job.signatures.items()},
    )
    layer_rows = [(sig, Measurement.from_samples(rounds)) for sig, rounds in by_signature.items()]
    return store.finish_variant(device_id, backend, network, layer_rows)


def _corrected_segments(sample: RoundSample) -> dict[str, list[float]]:
    """Per-layer segment times with the profiler's own per-node overhead removed.

    Instrumentation makes profiled runs slower than plain ones; the excess of the summed
    segments over the plain median is spread evenly over the profiled nodes (a few
    microseconds each) and subtracted, so corrected segments add up to the plain time.
    An excess beyond :data:`MAX_NODE_OVERHEAD_MS` per node is not instrumentation but the host
    changing state within the visit (its plain and profiled runs in different states): only the
    capped overhead is subtracted and the segments are scaled to the plain time. Subtracting it all
    per node (as before) zeroed every layer faster than the excess per node, and the fit, weighing
    relative errors, followed those zeros (docs/method.md, "Layer times of a visit that changed state").
    """
    plain = statistics.median(sample.plain_ms)
    raw_total = statistics.median([sum(run.values()) for run in sample.segments])
    nodes = sum(sample.nodes_per_layer.values()) or 1
    per_node = min(max(0.0, raw_total - plain) / nodes, MAX_NODE_OVERHEAD_MS)
    instrumented = raw_total - per_node * nodes
    scale = plain / instrumented if instrumented > plain else 1.0
    corrected: dict[str, list[float]] = defaultdict(list)
    for run in sample.segments:
        for layer, ms in run.items():
            corrected[layer].append(scale * max(0.0, ms - per_node * sample.nodes_per_layer.get(layer, 1)))
    return corrected
