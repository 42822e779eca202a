import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from latprune.allocator import keep_large_buffers

keep_large_buffers()  # as the command line does: large batches reuse heap buffers

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_TEST = SHARED / "data" / "cifar10-jpeg" / "test"
CIFAR_TRAIN = SHARED / "data" / "cifar10-jpeg" / "train"
CIFAR_MODELS = SHARED / "models" / "cifar10"


def shared_checkpoint(name: str) -> Path:
    """Path of a shared CIFAR checkpoint, skipping the test where ../shared is absent."""
    matches = sorted(CIFAR_MODELS.glob(f"{name}-*.th"))
    if not matches:
        pytest.skip(f"../shared checkpoint for {name} not present")
    return matches[0]


@pytest.fixture
def cifar_test_dir() -> Path:
    if not CIFAR_TEST.is_dir():
        pytest.skip("../shared CIFAR-10 test images not present")
    return CIFAR_TEST


def random_kept(groups, seed: int, low: float = 0.3, high: float = 1.0) -> dict[str, list[int]]:
    """Random kept channels per group: a width of low..high of each group, legal for its divisor."""
    rng = random.Random(seed)
    kept = {}
    for group in groups:
        per_slice = group.width // group.divisor
        count = max(1, round(per_slice * rng.uniform(low, high)))
        kept[group.id] = group.slice_pattern(sorted(rng.sample(range(per_slice), count)))
    return kept


def trained_like(loaded, calib: torch.Tensor):
    """Give a random-init model non-trivial BN statistics and affine parameters (a stand-in for training)."""
    from latprune.recovery import recalibrate_batchnorm

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in loaded.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
    recalibrate_batchnorm(loaded.model, calib)
    return loaded


@pytest.fixture(scope="module")
def calib():
    """64 random calibration images of CIFAR shape."""
    return torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet20(calib):
    """cifar:resnet20 with random weights and non-trivial BatchNorm state."""
    from latprune.models import load_model

    torch.manual_seed(0)
    return trained_like(load_model("cifar:resnet20"), calib)


@pytest.fixture(scope="module")
def pruned20(resnet20):
    """``resnet20`` keeping every second channel of every group."""
    from latprune.groups import find_channel_groups
    from latprune.pruned_file import prune_loaded

    groups = find_channel_groups(resnet20.model, resnet20.example_input()).groups
    return prune_loaded(resnet20, {g.id: list(range(0, g.width, 2)) for g in groups})


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    """Damage tables go to the test session's folder, never the user's cache."""
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "latprune-cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def profiled_resnet20(tmp_path_factory):
    """A small torch-cpu profile of cifar:resnet20 (seconds, not minutes), shared by the tests as data. Its visits
    are kept at their first try: on a loaded host, timing them again in quiet brackets made this profile take 30-82 s
    instead of 8-10 s, and those brackets have tests of their own (test_quiet_visits.py, test_hostile_inputs.py)."""
    import latprune.profiler.quiet_visits as quiet_visits
    from latprune.models import load_model
    from latprune.profiler.runner import ProfileSettings, profile_model

    fast = ProfileSettings(widths=8, variants=12, rounds=3, runs=3, profiled_runs=3, warmup=1, min_round_ms=5,
                           global_warmup_s=0.0)
    db = tmp_path_factory.mktemp("perf") / "p.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quiet_visits, "MAX_RETIMES", 0)
        patch.setattr(quiet_visits, "QUIET_WAIT_S", 0.0)
        profile_model(load_model("cifar:resnet20"), "torch-cpu", db=db, settings=fast, progress=False)
    return db


@pytest.fixture
def synthetic_backend(monkeypatch):
    """A registered backend whose layer times are a smooth function of the layer's MACs, times ``scale``; and
    times ``slowdown(call)`` for the ``call``-th timing, where a test sets it (a host contended at times)."""
    from fixtures.synthetic_backend import register_synthetic_backend

    return register_synthetic_backend(monkeypatch)


@dataclass
class Profiled:
    analysis: object
    db: Path
    perf: object
    fitted: object
    timing: object


SYNTHETIC_PROFILE = dict(widths=8, variants=16, rounds=2, runs=2, profiled_runs=2, warmup=0, min_round_ms=0.0,
                         global_warmup_s=0.0, anchors=16)


@pytest.fixture(scope="session")
def synthetic_profile(tmp_path_factory) -> Path:
    """A folder holding cifar:resnet20 profiled on the synthetic backend (at scale 1) and its stored fit, made once
    per session: the ``profiled`` fixture gives each test a copy (6-8 s each when every test profiled anew)."""
    from fixtures.synthetic_backend import register_synthetic_backend
    from latprune import pipeline
    from latprune.profiler.api import ProfileSettings

    folder = tmp_path_factory.mktemp("synthetic_profile")
    with pytest.MonkeyPatch.context() as patch:
        register_synthetic_backend(patch)
        analysis = pipeline.analyse(pipeline.load("cifar:resnet20"))
        pipeline.profile(analysis, "synthetic", db=folder / "p.sqlite", settings=ProfileSettings(**SYNTHETIC_PROFILE),
                         progress=False)
        pipeline.fit(folder / "p.sqlite", "synthetic")
    return folder


@pytest.fixture
def profiled(synthetic_backend, synthetic_profile, tmp_path) -> Profiled:
    """cifar:resnet20 profiled on the synthetic backend (at scale 1), and its fitted performance model: a copy of
    the session's profile, for the test to change."""
    import shutil

    from latprune import pipeline
    from latprune.profiler.api import ProfileSettings

    folder = tmp_path / "profile"
    shutil.copytree(synthetic_profile, folder)
    db = folder / "p.sqlite"
    analysis = pipeline.analyse(pipeline.load("cifar:resnet20"))
    perf, fitted = pipeline.fit(db, "synthetic")
    return Profiled(analysis, db, perf, fitted, ProfileSettings(**SYNTHETIC_PROFILE))


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a throwaway PostgreSQL server for this session (see tests/postgres_server.py)."""
    from postgres_server import server_url

    yield from server_url()


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path):
    """A new profile store's location, once per kind: a SQLite file and a database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "profiles.sqlite")
    from postgres_server import fresh_database

    return fresh_database(request.getfixturevalue("postgres_server"))
