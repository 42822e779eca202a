"""Profiles made on a loaded host (#26): variant visits are kept only between two quiet checks of the dense
network, timed again otherwise, and kept scaled only after every try ran loaded."""

import random
import statistics

import pytest

from latprune.profiler import quiet_visits
from latprune.profiler.api import ProfileSettings, ProfileStore
from latprune.profiler.backends import RoundSample
from latprune.profiler.quiet_visits import MAX_RETIMES, QuietVisits


def _visits(check_values: list[float], bracket: int,
            earlier: int = 4) -> tuple[QuietVisits, list[tuple[str, float]], list[str]]:
    """QuietVisits whose dense checks return ``check_values`` in turn (then 1.0), over ``earlier`` quiet checks;
    returns it, the kept (item, scale) pairs and the items in the order they were timed."""
    values = iter(check_values)
    kept, timed = [], []

    def sample(item: str) -> RoundSample:
        timed.append(item)
        return RoundSample([2.0], [2.0], [{"layer": 2.0}], {"layer": 1})

    visits = QuietVisits(lambda: next(values, 1.0), [1.0] * earlier, bracket)
    visits.visit(["a", "b", "c", "d"], sample, lambda item, s: kept.append((item, s.plain_ms[0] / 2.0)))
    return visits, kept, timed


def test_visits_between_two_quiet_checks_are_kept_as_timed():
    visits, kept, timed = _visits([1.0, 1.02, 1.01], bracket=2)
    assert timed == ["a", "b", "c", "d"]
    assert [k for k, _ in kept] == ["a", "b", "c", "d"]
    # divided by the slower of the two checks beside them (the quiet time is 1.0)
    assert [s for _, s in kept] == pytest.approx([1 / 1.02] * 4)
    assert visits.counts.retimed == visits.counts.kept_loaded == 0


def test_a_bracket_that_ends_loaded_is_timed_again_in_smaller_brackets_once_quiet():
    # before a,b quiet; after them loaded (2.0); waiting: loaded once more (1.8), then quiet; a alone, then b,c, d
    visits, kept, timed = _visits([1.0, 2.0, 1.8, 1.0, 1.0, 1.0, 1.0], bracket=2)
    assert timed == ["a", "b", "a", "b", "c", "d"]
    assert [k for k, _ in kept] == ["a", "b", "c", "d"]
    assert visits.counts.retimed == 2 and visits.counts.kept_loaded == 0
    assert visits.checks == [1.0] * 4 + [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]  # the check made while waiting is left out


def test_a_visit_loaded_every_time_is_kept_scaled_and_counted(monkeypatch):
    monkeypatch.setattr(quiet_visits, "QUIET_WAIT_S", 0.0)  # no waiting: every check below runs loaded
    # (with 100 quiet checks before, so the quiet time stays 1.0: a host loaded for long makes its load the quiet)
    visits, kept, timed = _visits([1.0] + [2.0] * 40, bracket=1, earlier=100)
    assert timed[:MAX_RETIMES + 1] == ["a"] * (MAX_RETIMES + 1)
    assert [k for k, _ in kept] == ["a", "b", "c", "d"]
    assert kept[0][1] == pytest.approx(0.5)  # divided by the dense slowdown, as before quiet brackets
    assert visits.counts.retimed == 4 * MAX_RETIMES and visits.counts.kept_loaded == 4


# ---------------------------------------------------------------- a whole profile under slow spells


def _spells(seed: int):
    """Slow spells of 40 timings with 20 quiet ones between them; in a spell each timing runs 1.5-3x slower, at
    random: the dense network's slowdown in a check says little about a variant timed beside it (as measured
    under load)."""
    rng = random.Random(seed)
    factors = {}

    def slowdown(call: int) -> float:
        if call % 60 < 20:
            return 1.0
        return factors.setdefault(call, rng.uniform(1.5, 3.0))

    return slowdown


def _layer_medians(db, model_key: str) -> dict[str, float]:
    with ProfileStore(db, readonly=True) as store:
        device = store.find_device(store.summaries()[0].fingerprint)
        return {t.signature.key(): t.measurement.median_ms for t in store.layer_timings(device, "synthetic")}


@pytest.mark.parametrize("retimes", [MAX_RETIMES, 0], ids=["quiet-brackets", "every-visit-scaled"])
def test_a_profile_made_under_random_slow_spells_holds_the_quiet_layer_times(synthetic_backend, tmp_path, monkeypatch,
                                                                            retimes):
    """With quiet brackets the layer times come out as on a quiet host; keeping every visit scaled by the dense
    slowdown (the profiler before quiet brackets: ``MAX_RETIMES`` 0, no waiting) stores them off by up to 2x."""
    from latprune import pipeline

    monkeypatch.setattr(quiet_visits, "MAX_RETIMES", retimes)
    if not retimes:
        monkeypatch.setattr(quiet_visits, "QUIET_WAIT_S", 0.0)
    analysis = pipeline.analyse(pipeline.load("cifar:resnet20"))
    settings = ProfileSettings(widths=8, variants=12, rounds=3, runs=2, profiled_runs=2, warmup=0, min_round_ms=0.0,
                               global_warmup_s=0.0, anchors=12, reference_every=4, max_extra_rounds=0)
    pipeline.profile(analysis, "synthetic", db=tmp_path / "quiet.sqlite", settings=settings, progress=False)
    start = synthetic_backend.calls
    slowdown = _spells(seed=0)
    synthetic_backend.slowdown = lambda call: slowdown(call - start)
    report = pipeline.profile(analysis, "synthetic", db=tmp_path / "spells.sqlite", settings=settings,
                              progress=False)
    quiet = _layer_medians(tmp_path / "quiet.sqlite", analysis.key)
    spells = _layer_medians(tmp_path / "spells.sqlite", analysis.key)
    assert set(spells) == set(quiet)
    close = statistics.mean(abs(spells[k] / quiet[k] - 1) <= 0.02 for k in quiet)
    if retimes:
        assert close >= 0.95, f"{close:.0%} of layer times within 2%"
        assert report.visits_retimed > 0 and report.visits_kept_loaded == 0
    else:
        assert close < 0.8, f"{close:.0%} of layer times within 2% though every loaded visit was kept"
        assert report.visits_retimed == 0 and report.visits_kept_loaded > 0
