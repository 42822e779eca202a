"""The main job end to end: profile, fit, plan, prune, recover, export, measure, evaluate, report.

``run_job`` takes a :class:`JobConfig` and returns one :class:`~latprune.run_summary.RunResult`;
``run_jobs`` runs several into one folder, writes ``summary.json`` and ``report.html`` and returns the
:class:`~latprune.run_summary.RunSummary`.
Each stage reads only what the previous stages produced: the profile database, the
fitted performance model, the plan file, the pruned model.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latprune.budget import Budget, BudgetRequest
from latprune.defaults import DEFAULT_RECOVERY, RECOVERY_CALIB_SIZE, RECOVERY_SECONDS
from latprune.errors import LatpruneError
from latprune.input_size import InputSize, check_input_size, load_at_size, preprocessing_at, unpruned_plan
from latprune.models import LoadedModel, default_input_shape, spec_family
from latprune.pipeline import PlanSettings, RecoveryRequest, SearchSettings, Verification
from latprune.planner.records import VerificationRecord
from latprune.settings import LoopReference
from latprune.preprocessing import Preprocessing
from latprune.profiler.api import ProfileSettings, RoundsRule
from latprune.pruned_file import dense_origin, save_pruned
from latprune.run_summary import Accuracy, LatencyFigures, LatencyOutcome, RunResult, RunSummary
from latprune.size_adaptation import Adaptation, adapt_to_reference
from latprune.size_choice import AUTO, choose_input_size
from latprune.size_survey import candidate_sizes

# Interleaved rounds of dense and pruned: at least 15 (this host's outliers need many), then until the paired
# ratio's 95% interval is within +-1.5%, at most 60 rounds or a minute (the quickstart stays quick).
MEASURE_RULE = RoundsRule(min_rounds=15, max_rounds=60, max_seconds=60.0)
# The built-in demonstration is sized to take about five minutes on 2 cores with every check done: smaller
# profiles, a ResNet-18 at 128x128, and shorter time caps on each paired measurement (wider intervals, recorded).
DEMO_RESNET18_SHAPE = (1, 3, 128, 128)
DEMO_VARIANTS = 16
DEMO_SEARCH_SECONDS = 8.0  # the digits CNN has 4 groups: its search scores every family well within this
DEMO_TIMING_MAX_S = 15.0  # each closed-loop round's paired timing (45 s otherwise)
DEMO_MEASURE_RULE = RoundsRule(min_rounds=15, max_rounds=60, max_seconds=25.0)
ADAPTED_WEIGHTS = "dense_at_size.pt"  # a run's dense network adapted to its input size (state dict)


@dataclass
class JobConfig:
    model: str
    budget: BudgetRequest
    backend: str = "ort-cpu"
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    calib: str | None = None  # unlabeled images: data-driven importance and recovery
    eval: str | None = None  # labelled ImageFolder: accuracy before and after
    recovery: str | None = None  # None: DEFAULT_RECOVERY when calib is given, else "none"
    importance: str | None = None  # None: taylor (data-driven) with calib, else l2
    objective: str | None = None  # None: calibrated (searched on calibration loss) with calib, else importance
    search: SearchSettings = field(default_factory=SearchSettings)
    calib_size: int = RECOVERY_CALIB_SIZE
    recovery_seconds: float | None = RECOVERY_SECONDS  # each training step's time box (None: every epoch)
    db: str | None = None
    threads: int | None = None
    bins: int = 2000
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    verify: Verification = field(default_factory=Verification)  # its db and threads are the job's
    depth: bool = True  # residual branches may be removed whole
    preprocessing: dict | None = None  # parts of the model's image preprocessing replaced: mean, std, resize
    input_size: int | str | None = None  # plan at this smaller size (shorter side) or AUTO's; judged at the own size
    adapt_size: bool = True  # with input_size and calib: the network there first taught its outputs at its own size
    measure: RoundsRule = MEASURE_RULE  # the final paired measurement of pruned against dense
    name: str = ""  # sub-folder of the output folder for this run's files
    notes: list[str] = field(default_factory=list)

    def plan_settings(self) -> PlanSettings:
        """How this job plans: :meth:`PlanSettings.for_request`'s defaults, as the ``plan`` command."""
        return PlanSettings.for_request(bool(self.calib), self.importance, self.objective, bins=self.bins,
                                        search=self.search, depth=self.depth,
                                        selection=self.recovery_request().selection)

    def recovery_request(self) -> RecoveryRequest:
        """The recovery this job runs: ``recovery``, else two-stage with calibration images, else none."""
        recipe = self.recovery if self.recovery is not None else (DEFAULT_RECOVERY if self.calib else "none")
        return RecoveryRequest(recipe=recipe, calib=self.calib, calib_size=self.calib_size,
                               seconds=self.recovery_seconds)

    def check(self, progress: bool = False) -> None:
        """Every mistake in the request, before the minutes of profiling: the evaluation images are all read
        here (an unreadable one would otherwise surface after the whole pipeline)."""
        if self.eval and not os.path.isdir(self.eval):
            raise LatpruneError(f"evaluation folder not found: {self.eval}")
        self.recovery_request()  # the recipe, its images and --calib-size
        self.plan_settings()  # refuses the calibrated objective without images, before any slow stage
        images = Preprocessing.for_family(spec_family(self.model)).with_options(**(self.preprocessing or {}))
        if self.input_size is not None:  # (a model's own preprocessing is checked again when it is loaded)
            native_shape = self.input_shape or default_input_shape(self.model)
            sizes = [self.input_size] if self.input_size != AUTO else candidate_sizes(native_shape)
            if not sizes:
                raise LatpruneError(f"--input-size auto: no smaller size to try below the model's input "
                                    f"{'x'.join(map(str, native_shape[-2:]))}")
            check_input_size(sizes[0], native_shape)
            preprocessing_at(images, native_shape, sizes[0])
        if self.eval:  # (only the image size is checked here, which a model's own preprocessing cannot change)
            from latprune.data import check_image_folder

            check_image_folder(self.eval, images, self.input_shape or default_input_shape(self.model),
                               progress=progress)


class _Stages:
    """Wall time per stage, announced on stderr."""

    def __init__(self, label: str, progress: bool):
        self.seconds: dict[str, float] = {}
        self.label, self.progress = label, progress

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.progress and name not in self.seconds:  # a stage may come back (load: the network, then its images)
            print(f"latprune run [{self.label}]: {name}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 2)


def run_job(config: JobConfig, out_dir: str | os.PathLike, progress: bool = True) -> RunResult:
    """Run the whole pipeline for one model; writes plan.json, pruned.pt and pruned.onnx; returns what it did.

    ``config`` has been checked (:meth:`JobConfig.check`, done by :func:`run_jobs`)."""
    from latprune import pipeline

    recovery = config.recovery_request()
    folder = Path(out_dir) / config.name
    folder.mkdir(parents=True, exist_ok=True)
    stage = _Stages(config.name or config.model, progress)
    with stage("load"):
        native = pipeline.load(config.model, config.weights, config.input_shape, config.preprocessing)
    request, loaded, sized, origin, dense_ms, alone, said = config.budget, native, None, None, None, False, None
    if config.input_size is not None:
        with stage("input size"):
            loaded, sized, dense_ms = _at_input_size(config, native, progress)
            alone = sized.alone_meets(config.budget)  # then nothing is profiled, planned, pruned or repaired
            request = config.budget if alone else sized.request(config.budget)
            # why nothing is planned, or why widths are although the size's median meets the speedup
            said = sized.describe_alone(config.budget) if alone else sized.describe_uncertain(config.budget)
    with stage("load"):
        analysis = pipeline.analyse(loaded)
        settings = config.plan_settings()
        # the planner's last stage scores its finalists' recovery on images after recovery's
        images = recovery.images(loaded, extra=settings.extra_images) if config.calib else None
    if sized is not None and config.adapt_size and images is not None:
        with stage("adapt to size"):
            photos = images[0][:recovery.size]  # recovery's, the planner's extra left out
            sized = dataclasses.replace(sized, adaptation=_adapt_to_size(native, loaded, photos, recovery, progress))
            origin = _save_adapted(loaded, folder / ADAPTED_WEIGHTS)  # what a later `recover` repairs toward
    notes = [said] if said else []
    if said and progress:
        print(f"latprune run: {said}", file=sys.stderr, flush=True)
    if alone:  # the network at the size, adapted where it was, is the result
        profiled, fitted = None, None
        plan = unpruned_plan(analysis, config.budget.resolve(dense_ms, "measured dense")).with_records(
            verification=VerificationRecord.unverified(said))
    else:
        with stage("profile"):
            profiled = pipeline.profile(analysis, config.backend, db=config.db, settings=config.profile,
                                        threads=config.threads, progress=progress)
        with stage("fit"):
            perf, fitted = pipeline.fit(profiled.db, config.backend, config.threads)
        with stage("plan"):
            verify = dataclasses.replace(config.verify, db=profiled.db, threads=config.threads,
                                         timing=config.profile, progress=config.verify.progress and progress,
                                         reference=sized and LoopReference(native, config.budget))
            plan = pipeline.plan(analysis, request, perf, fitted, config.backend, settings,
                                 calib=None if images is None else images[0], verify=verify)
    plan.save(folder / "plan.json")
    with stage("prune"):
        pruned = pipeline.prune(analysis, plan)
        if origin is not None:
            pruned.metadata.update(dense=origin, adapted_to_size=sized.adaptation.to_json())
    report, final = None, pruned
    if recovery.steps and not alone:
        with stage("recover"):
            own = None if images is None else (images[0][:recovery.size], None)  # the planner's extra left out
            final, report = pipeline.repair(analysis, pruned, recovery, own, progress=progress)
    with stage("export"):
        save_pruned(final, folder / "pruned.pt")
        onnx_diff = pipeline.export(final.model, loaded.input_shape, folder / "pruned.onnx")
    with stage("measure"):
        # the reference is the dense network at its own input size, whatever size the plan was made at
        timing, device = pipeline.measure_against_dense(native.model, [final.model], native.input_shape,
                                                        config.backend, rule=config.measure, threads=config.threads,
                                                        global_warmup_s=config.profile.global_warmup_s, warn=progress,
                                                        quiet_ms=pipeline.quiet_dense_ms(
                                                            profiled.db if profiled else config.db, config.backend,
                                                            native, config.threads),
                                                        input_shapes=[loaded.input_shape])
        dense_m, pruned_m, ratio = timing.reference, timing.networks[0], timing.ratios[0]
    accuracy = None
    if config.eval:
        with stage("evaluate"):
            def top1(model: torch.nn.Module, at: LoadedModel = loaded) -> tuple[float, int]:
                return pipeline.evaluate(model, config.eval, at.preprocessing, at.input_shape,
                                         progress=progress, checked=True)  # JobConfig.check decoded every image

            dense_top1, images_scored = top1(native.model, native)
            accuracy = Accuracy(images=images_scored, dense=dense_top1,
                                pruned=top1(pruned.model)[0] if report else None, recovered=top1(final.model)[0])
    # Either kind of budget is judged by the pruned model's ratio to the dense model measured in the same
    # rounds (paired round by round) times the dense median; the plan itself had to use the predicted dense latency.
    planned = Budget.from_json(plan.budget)
    judged = config.budget.resolve(dense_m.median_ms, "measured dense")
    latency = LatencyOutcome(
        backend=config.backend, budget_ms=judged.ms, planned_ms=planned.target_ms, margin=judged.margin,
        budget_basis=judged.describe(), budget=judged.to_json(), plan_budget=planned.to_json(),
        # (a plan made at a smaller input size predicts the dense network at that size, not the reference)
        dense=LatencyFigures.of(plan.dense_predicted_ms if sized is None else None, dense_m),
        pruned=LatencyFigures.of(plan.predicted_ms, pruned_m,
                                 derived_ms=config.budget.judged_ms(ratio.ratio, dense_m.median_ms)),
        ratio=ratio, ratio_converged=timing.converged,
        predicted_speedup=(plan.predicted_speedup if sized is None or plan.predicted_speedup is None
                           else plan.predicted_speedup / sized.dense_ratio.ratio),
        verification=plan.verification, slow_state_rounds=timing.slow_state_rounds, in_quiet_state=timing.settled)
    return RunResult(
        name=config.name or config.model, model=config.model, weights=config.weights,
        input_shape=tuple(loaded.input_shape), plan=plan,
        device=device.get("fingerprint", fitted.device if fitted else pipeline.this_device(config.backend,
                                                                                           config.threads)),
        input_size=sized,
        latency=latency, accuracy=accuracy, recovery=report.to_dict() if report else None,
        onnx_max_abs_diff=onnx_diff,
        profile={} if profiled is None else {
            "variants_timed": profiled.variants_timed, "new_layer_rows": profiled.new_layer_rows,
            "alignment_step": profiled.alignment_step, "noise": profiled.noise_round_spread, "db": profiled.db},
        perf_model={} if fitted is None else fitted.status, stages_s=dict(stage.seconds),
        notes=tuple(config.notes) + tuple(notes) + tuple(n for n in (latency.drift_note(),) if n),
        files={**{k: str(folder / f)
                  for k, f in (("plan", "plan.json"), ("pruned", "pruned.pt"), ("onnx", "pruned.onnx"))},
               **({} if origin is None else {"adapted_dense": origin["weights"]})})


def _save_adapted(loaded: LoadedModel, path: Path) -> dict:
    """The dense network adapted to its input size saved as a state dict at ``path``, and the record a pruned file
    keeps of it (:func:`~latprune.pruned_file.dense_origin`): recovery's teacher is that network, not the factory's."""
    torch.save(loaded.model.state_dict(), path)
    return dense_origin(dataclasses.replace(loaded, weights=str(path.resolve())))


def _at_input_size(config: JobConfig, native: LoadedModel, progress: bool) -> tuple[LoadedModel, InputSize, float]:
    """The network at the run's input size (``auto``: chosen by :func:`~latprune.size_choice.choose_input_size`), its
    dense latency there relative to itself at its own size (paired: the final measurement's rule for a size given,
    the survey's for a size chosen, all candidates in the same rounds), and the latter's median milliseconds."""
    from latprune import pipeline

    choice = None
    if config.input_size == AUTO:
        choice, sized, dense_ms = choose_input_size(native, config.backend, config.budget, config.weights,
                                                    config.preprocessing, config.threads,
                                                    config.profile.global_warmup_s, config.db, progress)
        ratio = choice.ratio
    else:
        sized = load_at_size(native, config.weights, config.input_size, config.preprocessing)
        timing, _ = pipeline.measure_against_dense(native.model, [sized.model], native.input_shape, config.backend,
                                                   rule=config.measure, threads=config.threads,
                                                   global_warmup_s=config.profile.global_warmup_s, warn=progress,
                                                   quiet_ms=pipeline.quiet_dense_ms(config.db, config.backend, native,
                                                                                    config.threads),
                                                   input_shapes=[sized.input_shape])
        ratio, dense_ms = timing.ratios[0], timing.reference.median_ms
    result = InputSize(tuple(native.input_shape), tuple(sized.input_shape), ratio,
                       native.preprocessing.describe(native.input_shape), choice=choice)
    if progress:
        print(f"latprune run: {result.describe()}", file=sys.stderr, flush=True)
    return sized, result, dense_ms


def _adapt_to_size(native: LoadedModel, sized: LoadedModel, photos: torch.Tensor, recovery: RecoveryRequest,
                   progress: bool) -> Adaptation:
    """``sized``'s network trained toward ``native``'s outputs on recovery's calibration ``photos`` (read for
    ``sized``; read again here for ``native``, the same photos: :func:`~latprune.data.random_subset`)."""
    from latprune.batching import forward_in_batches

    reference = forward_in_batches(native.model, recovery.images(native)[0][:len(photos)])
    result = adapt_to_reference(sized.model, photos, reference, progress=progress)
    if progress:
        print(f"latprune run: {result.describe()}", file=sys.stderr, flush=True)
    return result


def run_jobs(configs: Sequence[JobConfig], out_dir: str | os.PathLike, progress: bool = True,
             checked: bool = False) -> RunSummary:
    """Run each job into ``out_dir`` and write ``summary.json`` and ``report.html`` there (``checked``: the
    configs' :meth:`JobConfig.check` has been run already)."""
    from latprune import __version__
    from latprune.pipeline import report

    for config in () if checked else configs:  # every request's mistakes before any folder is made or minute spent
        config.check(progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = tuple(run_job(config, out, progress) for config in configs)
    return report(RunSummary(latprune=__version__, created=created, runs=runs), out)


def default_jobs(out_dir: str | os.PathLike, backend: str = "ort-cpu", db: str | None = None,
                 progress: bool = True, verify: Verification = Verification(), margin: float = 0.0
                 ) -> list[JobConfig]:
    """The built-in demonstration: latency planning for torchvision ResNet-18 (random weights, 1.5x
    faster), and accuracy on scikit-learn's digits with a small CNN trained here (1.5x faster)."""
    from latprune.demo import DIGITS_SPEC, train_digits_cnn, write_digits

    verify = dataclasses.replace(verify, loop=dataclasses.replace(verify.loop, timing_max_seconds=DEMO_TIMING_MAX_S))
    digits = Path(out_dir) / "data" / "digits"
    train, test = write_digits(digits)
    weights = digits / "digits_cnn.pt"
    notes = []
    if not weights.exists():
        began = time.perf_counter()
        trained = train_digits_cnn(train, weights, progress=progress)
        notes.append(f"digits CNN trained here: {trained['epochs']} epochs on {trained['train_images']} images in "
                     f"{time.perf_counter() - began:.0f} s")
    return [
        JobConfig(model="torchvision:resnet18", budget=BudgetRequest(speedup=1.5, margin=margin), backend=backend,
                  db=db, name="resnet18", verify=verify, input_shape=DEMO_RESNET18_SHAPE,
                  profile=ProfileSettings(variants=DEMO_VARIANTS), measure=DEMO_MEASURE_RULE,
                  notes=[f"random weights (nothing is downloaded): latency only; at 128x128 with {DEMO_VARIANTS} "
                         f"profiled variants and shorter timing caps, so that the demonstration takes minutes "
                         f"(`latprune run --model torchvision:resnet18` profiles 64 variants at 224x224)"]),
        JobConfig(model=DIGITS_SPEC, weights=str(weights), budget=BudgetRequest(speedup=1.5, margin=margin),
                  backend=backend, db=db, verify=verify, calib=str(train), eval=str(test), name="digits",
                  calib_size=512, search=SearchSettings(seconds=DEMO_SEARCH_SECONDS),
                  # the host is warm: it has just timed ResNet-18 (the warm-ups of profile, loop and measure skipped)
                  profile=ProfileSettings(widths=16, variants=DEMO_VARIANTS, global_warmup_s=0.0),
                  measure=DEMO_MEASURE_RULE,
                  notes=notes + ["scikit-learn's 8x8 handwritten digits, upscaled to 32x32; calibration reads the "
                                 "training images without labels, accuracy on the held-out quarter"]),
    ]
