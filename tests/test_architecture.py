"""The pipeline's shape: one analysis per command, budgets resolved once, stage boundaries, one timer."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch_pruning as tp

import latprune.analysis
from fixtures.budgets import budget_between
from latprune.budget import Budget, BudgetRequest
from latprune.cli import main
from latprune.errors import LatpruneError
from latprune.models import load_model
from latprune.network import Measurement
from latprune.profiler.backends import Prepared, RoundSample
from latprune.profiler.timer import Timer

PACKAGE = Path(latprune.analysis.__file__).parent
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def graph_builds(monkeypatch):
    """Counts dependency graphs built per model object, and whole analyses."""
    counts = {"analyses": 0, "graphs": {}}
    build = tp.DependencyGraph.build_dependency
    analyse = latprune.analysis.find_channel_groups

    def counting_build(self, model, *args, **kwargs):
        counts["graphs"][id(model)] = counts["graphs"].get(id(model), 0) + 1
        return build(self, model, *args, **kwargs)

    def counting_analyse(*args, **kwargs):
        counts["analyses"] += 1
        return analyse(*args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counting_build)
    monkeypatch.setattr(latprune.analysis, "find_channel_groups", counting_analyse)
    return counts


@pytest.fixture
def loaded_models(monkeypatch):
    """The dense networks the pipeline loads during a command."""
    models = []

    def remember(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        models.append(loaded.model)
        return loaded

    monkeypatch.setattr("latprune.pipeline.load_model", remember)
    monkeypatch.setattr("latprune.pruned_file.load_model", remember)  # the dense model a pruned file names
    return models


def _dense_model_graphs(counts: dict, model) -> int:
    return counts["graphs"].get(id(model), 0)


def test_prune_with_recovery_analyses_the_dense_model_once(graph_builds, loaded_models, tmp_path):
    """prune -> recover in one command: one analysis, one graph of the dense model (copies being
    pruned are traced themselves, since Torch-Pruning edits the modules its graph came from)."""
    images = tmp_path / "calib"
    images.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(images / f"{i}.png")
    out = tmp_path / "pruned.pt"
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--recovery", "bn", "--calib",
                 str(images), "--out", str(out), "--json"]) == 0
    assert graph_builds["analyses"] == 1
    assert len(loaded_models) == 1 and _dense_model_graphs(graph_builds, loaded_models[0]) == 1


def test_recover_command_analyses_the_dense_model_once(graph_builds, loaded_models, tmp_path):
    """The pruned file's network is rebuilt on the dense model's analysis, not on a second one."""
    import torch
    from PIL import Image

    images = tmp_path / "calib"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(images / f"{i}.png")
    weights, pruned = tmp_path / "w.pt", tmp_path / "pruned.pt"
    torch.save(load_model("cifar:resnet20").model.state_dict(), weights)
    assert main(["prune", "--model", "cifar:resnet20", "--weights", str(weights), "--uniform", "0.5", "--out",
                 str(pruned), "--json"]) == 0
    graph_builds["analyses"] = 0
    loaded_models.clear()
    assert main(["recover", "--pruned", str(pruned), "--model", "cifar:resnet20", "--recovery", "bn", "--calib",
                 str(images), "--out", str(tmp_path / "r.pt"), "--json"]) == 0
    assert graph_builds["analyses"] == 1
    assert len(loaded_models) == 1 and _dense_model_graphs(graph_builds, loaded_models[0]) == 1


def test_plan_command_analyses_once(graph_builds, loaded_models, profiled_resnet20, capsys):
    budget, dense = budget_between(profiled_resnet20, "torch-cpu", "cifar:resnet20", 0.25)
    speedup = round(dense / budget, 4)
    graph_builds["analyses"] = 0  # counted from here: the command alone
    graph_builds["graphs"].clear()
    loaded_models.clear()
    assert main(["plan", "--model", "cifar:resnet20", "--backend", "torch-cpu", "--db", str(profiled_resnet20),
                 "--speedup", str(speedup), "--method", "tp-global", "--no-verify", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget"]["basis"] == "predicted dense" and plan["budget"]["speedup"] == speedup
    assert graph_builds["analyses"] == 1
    assert _dense_model_graphs(graph_builds, loaded_models[0]) == 1


def test_budget_request_is_checked_once_when_made():
    with pytest.raises(LatpruneError, match="exactly one of --budget-ms and --speedup"):
        BudgetRequest()
    with pytest.raises(LatpruneError, match="exactly one"):
        BudgetRequest(budget_ms=1.0, speedup=2.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(LatpruneError, match="--budget-ms must be a positive finite number"):
            BudgetRequest(budget_ms=bad)
    for bad in (0.5, 1.0, math.nan, math.inf):
        with pytest.raises(LatpruneError, match="--speedup must be a finite number greater than 1"):
            BudgetRequest(speedup=bad)
    with pytest.raises(LatpruneError, match="--margin"):
        BudgetRequest(speedup=2.0, margin=1.0)


def test_budget_resolves_a_speedup_against_the_dense_latency_it_names():
    request = BudgetRequest(speedup=2.0, margin=0.25)
    planned = request.resolve(10.0, "predicted dense")
    judged = request.resolve(12.0, "measured dense")
    assert (planned.ms, planned.target_ms, planned.basis) == (5.0, 4.0, "predicted dense")
    assert (judged.ms, judged.dense_ms, judged.describe()) == (6.0, 12.0, "measured dense / 2")
    given = BudgetRequest(budget_ms=3.0).resolve(10.0, "measured dense")
    assert (given.ms, given.basis, given.dense_ms) == (3.0, "given", None)
    assert Budget.from_json(json.loads(json.dumps(planned.to_json()))) == planned


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_only_the_profilers_public_entry_points_are_imported_from_outside_it():
    outside = [p for p in PACKAGE.rglob("*.py") if "profiler" not in p.relative_to(PACKAGE).parts]
    outside += list((PACKAGE.parent / "benchmarks").glob("*.py"))
    offenders = {f"{p.name}: {m}" for p in outside for m in _imports(p)
                 if m.startswith("latprune.profiler") and m not in ("latprune.profiler", "latprune.profiler.api")}
    assert not offenders


def test_the_network_vocabulary_imports_no_stage():
    stages = ("latprune.profiler", "latprune.perfmodel", "latprune.planner", "latprune.recovery",
              "latprune.pipeline", "latprune.job")
    for path in (PACKAGE / "network").glob("*.py"):
        assert not [m for m in _imports(path) if m.startswith(stages)], path.name


def test_cli_holds_no_stage_logic():
    """The cli package parses and formats: it reaches the stages through latprune.pipeline (and job for run,
    size_survey for sizes)."""
    allowed = {"latprune.pipeline", "latprune.job", "latprune.size_survey", "latprune.errors", "latprune.defaults",
               "latprune.budget",
               "latprune.outputs", "latprune.allocator",  # process setup before a command runs
               "latprune", "latprune.models", "latprune.planner.plan", "latprune.pruned_file", "latprune.surgery",
               "latprune.sparsity", "latprune.recovery", "latprune.profiler.api", "latprune.planner.closed_loop",
               "latprune.planner.records", "latprune.run_summary"}  # typed results it formats
    for path in (PACKAGE / "cli").glob("*.py"):
        used = {m for m in _imports(path) if m.startswith("latprune") and not m.startswith("latprune.cli")}
        assert used <= allowed, (path.name, used - allowed)


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_the_command_line_parser_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, latprune.cli as cli; cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numba', 'sklearn', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_names_the_parser_offers_are_the_registries():
    from latprune.defaults import IMPORTANCE_CRITERIA, RECOVERY_METHODS
    from latprune.planner.importance import CRITERIA
    from latprune.recovery import METHODS

    assert IMPORTANCE_CRITERIA == tuple(CRITERIA) and RECOVERY_METHODS == tuple(METHODS)


@pytest.mark.parametrize("extra", [["--no-verify"], [], ["--no-verify", "--margin", "0.1"], ["--calib", "imgs"]])
def test_plan_and_run_build_the_same_request(extra):
    """One builder, one set of defaults: the same flags give plan and run the same aim and the same settings."""
    from latprune.cli import build_parser
    from latprune.cli.requests import budget, plan_settings
    from latprune.job import JobConfig

    parser = build_parser()
    plan_args = parser.parse_args(["plan", "--model", "cifar:resnet20", "--backend", "ort-cpu", "--speedup", "2",
                                   *extra])
    run_args = parser.parse_args(["run", "--model", "cifar:resnet20", "--speedup", "2", *extra])
    assert budget(plan_args) == budget(run_args)
    expected = {"--no-verify": 0.03, "--margin": 0.1}
    assert budget(plan_args).margin == next((v for k, v in reversed(expected.items()) if k in extra), 0.0)
    job = JobConfig(model="cifar:resnet20", budget=budget(run_args), calib=run_args.calib)
    planned = plan_settings(plan_args)
    assert (planned.importance, planned.objective) == (job.plan_settings().importance, job.plan_settings().objective)


class _FakeBackend:
    """Returns run times that identify the network and the visit, so the timer's bookkeeping is checkable."""

    def __init__(self):
        self.visits: list[str] = []

    def time(self, prepared: Prepared, warmup: int, runs: int, profiled_runs: int,
             warmup_ms: float = 0.0) -> RoundSample:
        self.visits.append(prepared.path.name)
        base = float(prepared.path.name[1:])
        return RoundSample([base + i / 100 for i in range(runs)], [], [], {})


def test_timer_interleaves_shuffled_rounds_and_keeps_raw_samples():
    backend = _FakeBackend()
    prepared = [Prepared(Path(f"m{i}"), ()) for i in (1, 2, 3)]
    timer = Timer(backend, warmup=0, seed=0)
    measurements = timer.interleaved(prepared, rounds=4, runs=3)
    assert [m.median_ms for m in measurements] == pytest.approx([1.01, 2.01, 3.01])
    assert all(m.rounds == ((b, b + 0.01, b + 0.02),) * 4 for m, b in zip(measurements, (1.0, 2.0, 3.0)))
    rounds = [backend.visits[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["m1", "m2", "m3"] for r in rounds)  # every round visits each network once
    assert len({tuple(r) for r in rounds}) > 1  # in a new order
    assert Measurement.from_samples([[1.0]]) == Measurement(1.0, 1.0, 1.0, 1, 0.0)  # samples do not change equality
    assert "rounds" not in measurements[0].to_json() and measurements[0].to_json(samples=True)["rounds"][0] == [
        1.0, 1.01, 1.02]


def test_device_identity_needs_no_running_backend(monkeypatch):
    import latprune.profiler.backends as backends

    def refuse(*args, **kwargs):
        raise AssertionError("a timing backend was started")

    monkeypatch.setattr(backends._OrtBackend, "_request", refuse)
    from latprune.profiler.api import describe_device, fingerprint

    description = describe_device("ort-cpu")
    assert description["backend"] == "ort-cpu" and description["provider"] == "CPUExecutionProvider"
    assert len(fingerprint(description)) == 16
