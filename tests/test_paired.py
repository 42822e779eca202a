"""Latency claims as paired ratios (#26): the interval and stopping rule, measurement on a host whose speed
alternates, `measure --pruned`, budgets in ms judged like speedups, and profiles normalised by the dense model."""

import json
import random
import statistics

import pytest

from latprune.budget import BudgetRequest
from latprune.network import Measurement, paired_interval
from latprune.network.measurement import median_interval_rank
from latprune.profiler.api import ProfileSettings, ProfileStore, RoundsRule, measure_paired

# ---------------------------------------------------------------- the interval


def test_the_interval_of_the_median_comes_from_order_statistics():
    assert median_interval_rank(15) == (4, True)  # [x(5), x(11)] of 15: 96.5% coverage
    assert median_interval_rank(6) == (1, True)
    assert median_interval_rank(5) == (0, False)  # five rounds cannot hold the median with 95%
    dense = Measurement.from_samples([[10.0]] * 15)
    plan = Measurement.from_samples([[float(r)] for r in (4.0, 4.1, 3.9, 4.15, 4.0, 4.12, 3.8, 4.0, 4.05, 3.95,
                                                          4.0, 4.18, 4.0, 3.0, 4.1)])
    ratio = paired_interval(plan, dense)
    ratios = sorted([r / 10 for r in (4.0, 4.1, 3.9, 4.15, 4.0, 4.12, 3.8, 4.0, 4.05, 3.95, 4.0, 4.18, 4.0, 3.0, 4.1)])
    assert (ratio.ratio, ratio.low, ratio.high, ratio.rounds) == (0.4, ratios[4], ratios[10], 15)
    assert ratio.half_width == pytest.approx(max(0.4 - ratios[4], ratios[10] - 0.4) / 0.4)


def test_rounds_quiet_for_both_networks_and_the_reference_alone_when_none_is():
    from latprune.network.measurement import paired_quiet_rounds

    dense = Measurement.from_samples([[10.0], [10.2], [20.0], [10.1], [10.0], [10.0]])
    plan = Measurement.from_samples([[5.0], [5.2], [10.0], [10.0], [5.1], [5.4]])  # round 3: only the plan slowed
    assert paired_quiet_rounds(plan, dense) == [0, 1, 4, 5]  # 5.4 is within 10% of the plan's own 5.0-5.1
    alternating = Measurement.from_samples([[10.0], [20.0]])
    assert paired_quiet_rounds(Measurement.from_samples([[10.0], [5.0]]), alternating) == [0]  # none quiet for both


def test_a_budget_in_ms_is_judged_like_a_speedup():
    """Both kinds: the paired ratio times the dense median of the same command."""
    for request in (BudgetRequest(budget_ms=5.0), BudgetRequest(speedup=2.0)):
        assert request.judged_ms(0.45, 10.0) == pytest.approx(4.5)


# ---------------------------------------------------------------- a host alternating between two speeds


def _pruned_resnet20():
    from latprune.analysis import analyse
    from latprune.models import load_model
    from latprune.pruned_file import prune_loaded

    analysis = analyse(load_model("cifar:resnet20"))
    return analysis, prune_loaded(analysis, {g.id: list(range(g.width // 2)) for g in analysis.groups})


def _alternating(backend, level: float = 2.0):
    """From now on, every other round (a round visits the dense and the pruned network once each) runs ``level``
    times slower."""
    start = backend.calls
    backend.slowdown = lambda call: level if ((call - start - 1) // 2) % 2 else 1.0


def test_the_paired_ratio_is_the_true_ratio_on_a_host_that_alternates(synthetic_backend):
    analysis, pruned = _pruned_resnet20()
    dense, shape = analysis.model, analysis.input_shape
    quiet, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 6), global_warmup_s=0)
    _alternating(synthetic_backend, 3.0)  # 12 rounds: 6 quiet ones, the fewest that hold the median with 95%
    noisy, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(12, 12), global_warmup_s=0)
    truth = quiet.ratios[0].ratio
    assert 0.2 < truth < 0.9
    assert noisy.ratios[0].ratio == pytest.approx(truth, rel=1e-9)
    assert noisy.ratios[0].half_width == pytest.approx(0.0, abs=1e-9) and noisy.converged
    assert noisy.reference.spread >= 0.99  # the raw times moved threefold
    assert noisy.derived_ms(0) == pytest.approx(truth * noisy.reference.median_ms)


def _load(backend, monkeypatch, slowdown) -> None:
    """From now on each visit runs ``slowdown(round, is_dense)`` times slower (a round: 2 visits, counted from
    now)."""
    start, unloaded, networks = backend.calls, backend.time, backend.networks

    def loaded(self, prepared, warmup, runs, profiled_runs, warmup_ms=0.0):
        sample = unloaded(self, prepared, warmup, runs, profiled_runs, warmup_ms)
        dense_ms = max(sum(n.values()) for n in networks.values())  # the dense network is the slowest
        is_dense = sum(networks[str(prepared.path)].values()) == dense_ms
        return sample.scaled(1 / slowdown((backend.calls - start - 1) // 2, is_dense))

    monkeypatch.setattr(backend, "time", loaded)


def _timed_under_load(backend, monkeypatch, slowdown):
    """The pruned resnet20's paired ratio on a quiet host (10 rounds), then measured over 20 rounds in which each
    visit runs ``slowdown(round % 5, is_dense)`` times slower. Returns (quiet ratio, the loaded timing)."""
    analysis, pruned = _pruned_resnet20()
    dense, shape = analysis.model, analysis.input_shape
    quiet, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(10, 10), global_warmup_s=0)
    _load(backend, monkeypatch, lambda r, is_dense: slowdown(r % 5, is_dense))
    timing, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(20, 20), global_warmup_s=0,
                               warn=False)
    return quiet.ratios[0].ratio, timing


def test_only_quiet_rounds_count_when_load_moves_the_ratio_itself(synthetic_backend, monkeypatch):
    """Measured on the AVX2 host: a process spinning on one core slowed the dense resnet56 more than its pruned
    copy, and their paired ratio fell from 0.52 to 0.40. Here three rounds in five are loaded that way (dense
    1.5x, pruned 1.2x): the quiet rounds' ratio is the quiet host's; every round's median is not."""
    truth, timing = _timed_under_load(synthetic_backend, monkeypatch,
                                      lambda r, is_dense: (1.5 if is_dense else 1.2) if r >= 2 else 1.0)
    every_round = statistics.median(v[0] / d[0] for v, d in zip(timing.networks[0].rounds, timing.reference.rounds))
    assert every_round == pytest.approx(truth * 1.2 / 1.5, rel=1e-6)  # what the plain median says: 20% low
    assert timing.ratios[0].ratio == pytest.approx(truth, rel=1e-9)
    assert timing.ratios[0].rounds == 8 and timing.converged  # 2 rounds in 5 were quiet


def test_a_round_counts_only_when_both_networks_ran_quiet(synthetic_backend, monkeypatch):
    """A slow spell that begins after the dense network's visit of a round slows only the pruned network's: the
    dense time calls the round quiet, its ratio is too high. Here it happens in three rounds of five (the pruned
    network 1.5x slower; judged by the dense time alone, the ratio would be 1.5x too high), and those rounds are
    left out."""
    truth, timing = _timed_under_load(synthetic_backend, monkeypatch,
                                      lambda r, is_dense: 1.5 if r >= 2 and not is_dense else 1.0)
    assert timing.ratios[0].ratio == pytest.approx(truth, rel=1e-9)
    assert timing.ratios[0].rounds == 8 and timing.converged  # 2 rounds in 5 were quiet for both


def test_rounds_go_on_until_the_interval_is_narrow_and_a_noisy_host_is_said(synthetic_backend):
    analysis, pruned = _pruned_resnet20()
    rng, start = random.Random(0), synthetic_backend.calls
    levels = [rng.uniform(1.0, 2.0) for _ in range(1000)]  # each round the host runs at its own speed...
    synthetic_backend.slowdown = lambda call: levels[(call - start - 1) // 2 % 1000] * rng.uniform(0.96, 1.04)  # +-4%
    enough, _ = measure_paired(analysis.model, [pruned.model], analysis.input_shape, "synthetic",
                               rule=RoundsRule(min_rounds=6, max_rounds=400, max_seconds=600), global_warmup_s=0)
    ratio = enough.ratios[0]
    assert enough.converged and ratio.half_width <= 0.015 and ratio.rounds > 6
    assert enough.warning() is None
    capped, _ = measure_paired(analysis.model, [pruned.model], analysis.input_shape, "synthetic",
                               rule=RoundsRule(min_rounds=6, max_rounds=8), global_warmup_s=0, warn=False)
    assert not capped.converged and len(capped.reference.rounds) == 8
    assert 2 <= capped.ratios[0].rounds < 8  # the quiet ones among them
    assert "the host is noisy: after 8 rounds" in capped.warning()


def test_measure_pruned_times_the_dense_model_and_prints_the_paired_speedup(synthetic_backend, tmp_path, capsys):
    from latprune.cli import main
    from latprune.pruned_file import save_pruned

    analysis, pruned = _pruned_resnet20()
    save_pruned(pruned, tmp_path / "half.pt")
    quiet, _ = measure_paired(analysis.model, [pruned.model], analysis.input_shape, "synthetic",
                              rule=RoundsRule(6, 6), global_warmup_s=0)
    _alternating(synthetic_backend)
    argv = ["measure", "--pruned", str(tmp_path / "half.pt"), "--backend", "synthetic", "--global-warmup", "0"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"]["ratio"] == pytest.approx(quiet.ratios[0].ratio, rel=1e-9)
    assert result["speedup"] == pytest.approx(1 / quiet.ratios[0].ratio)
    assert result["derived_ms"] == pytest.approx(result["ratio"]["ratio"] * result["dense"]["median_ms"])
    assert result["converged"] and result["ratio"]["rounds"] >= 6  # the quiet half of at least 10 rounds
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "of the dense model's latency, paired round by round (95% interval" in text and "speedup" in text


# ---------------------------------------------------------------- a host of two states


def _slow_state(round_index: int, is_dense: bool) -> float:
    """The 2-core host's slow state (ONNX Runtime's two threads slowed): the dense network 1.6x, its pruned copy
    2x, so the paired ratio itself moves (measured on Lite0: 0.52 of dense quiet, 0.65 slow)."""
    return 1.6 if is_dense else 2.0


def test_two_states_show_in_the_checks_and_one_state_is_not_a_slow_state():
    from latprune.network.quiet_reference import in_quiet_state, quiet_state_ms

    assert quiet_state_ms([*[4.6] * 11, *[7.5] * 9]) == 4.6
    assert quiet_state_ms([4.6, 4.7, 4.8, 4.65, 5.0] * 4) is None  # within 1.15x: one state
    assert quiet_state_ms([*[4.6] * 39, 7.5]) is None  # one slow check of 40 is an outlier, not a state
    assert quiet_state_ms([]) is None
    assert in_quiet_state(5.2, 4.6) and not in_quiet_state(5.4, 4.6) and in_quiet_state(99.0, None)


def test_rounds_of_the_slow_state_are_left_out_given_the_quiet_time(synthetic_backend, monkeypatch):
    analysis, pruned = _pruned_resnet20()
    dense, shape = analysis.model, analysis.input_shape
    quiet, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 6), global_warmup_s=0)
    truth, quiet_ms = quiet.ratios[0].ratio, quiet.reference.median_ms
    _load(synthetic_backend, monkeypatch, lambda r, is_dense: _slow_state(r, is_dense) if r < 12 else 1.0)
    unaware, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 40), global_warmup_s=0)
    assert unaware.ratios[0].ratio == pytest.approx(truth * 2.0 / 1.6, rel=1e-9)  # six slow rounds "converged"
    _load(synthetic_backend, monkeypatch, lambda r, is_dense: _slow_state(r, is_dense) if r < 12 else 1.0)
    aware, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 40), global_warmup_s=0,
                              quiet_ms=quiet_ms)
    assert aware.ratios[0].ratio == pytest.approx(truth, rel=1e-9)
    assert aware.slow_state_rounds == 12 and aware.settled and aware.converged and aware.warning() is None
    assert len(aware.reference.rounds) == 6 and aware.reference.median_ms == pytest.approx(quiet_ms)


def test_a_slow_state_that_never_ends_is_waited_out_then_said(synthetic_backend, monkeypatch):
    analysis, pruned = _pruned_resnet20()
    dense, shape = analysis.model, analysis.input_shape
    quiet, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 6), global_warmup_s=0)
    _load(synthetic_backend, monkeypatch, _slow_state)
    timing, _ = measure_paired(dense, [pruned.model], shape, "synthetic", rule=RoundsRule(6, 10), global_warmup_s=0,
                               warn=False, quiet_ms=quiet.reference.median_ms)
    assert len(timing.reference.rounds) == 30 and timing.slow_state_rounds == 30  # 3x the rule's rounds
    assert not timing.settled and "stayed in its slow state" in timing.warning()
    assert timing.ratios[0].ratio == pytest.approx(quiet.ratios[0].ratio * 2.0 / 1.6, rel=1e-9)  # that state's


def test_the_closed_loop_timer_leaves_out_the_slow_state_its_profile_has_seen(profiled, synthetic_backend,
                                                                             monkeypatch):
    from latprune.profiler.variant_timer import VariantTimer

    p = profiled
    widths = {g.id: max(g.width // 2, 1) for g in p.analysis.groups}
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=RoundsRule(4, 8), settings=p.timing) as timer:
        quiet = timer.time(widths)
    with ProfileStore(p.db) as store:  # the profile saw the host in both states
        device_id = store.find_device(p.fitted.device)
        for slow in [False] * 14 + [True] * 6:
            store.record_drift_check(device_id, "synthetic", p.analysis.key,
                                     quiet.dense.median_ms * (1.6 if slow else 1.0))
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=RoundsRule(4, 8), settings=p.timing) as timer:
        _load(synthetic_backend, monkeypatch, lambda r, is_dense: _slow_state(r, is_dense) if r < 5 else 1.0)
        timed = timer.time(widths)
    assert timed.rejected_rounds == 5
    assert timed.variant.median_ms == pytest.approx(quiet.variant.median_ms)
    assert timed.dense.median_ms == pytest.approx(quiet.dense.median_ms)


# ---------------------------------------------------------------- profiles that survive a slow spell


def test_the_quiet_time_is_the_lower_quartile_and_a_round_is_only_scaled_for_running_slow():
    from latprune.network.quiet_reference import quiet_reference_ms, slowdown_factor

    assert quiet_reference_ms([0.9, 0.8]) == 0.8
    assert quiet_reference_ms([0.62, 0.82, 0.83]) == 0.82  # one fast visit of three does not set it
    assert quiet_reference_ms([*[0.62] * 2, *[0.8] * 10]) == 0.8  # a fast minority
    assert quiet_reference_ms([*[1.0] * 10, *[2.0] * 10]) == 1.0  # slow spells, half of the time, stay out
    assert slowdown_factor(1.6, 0.8) == 2.0 and slowdown_factor(0.62, 0.8) == 1.0
    with pytest.raises(ValueError):
        quiet_reference_ms([])


SLOW_SPELLS = (lambda call: 2.0 if (call // 20) % 2 else 1.0, 2.0)  # slow spells of 20 visits
FAST_MOMENT = (lambda call: 0.7 if call in (3, 4) else 1.0, 0.7)  # one reference check 30% faster than any other
FAST_VISITS = (lambda call: 0.75 if call % 7 == 0 else 1.0, 0.75)  # one visit in seven runs fast, whatever it times


@pytest.mark.parametrize("host", [SLOW_SPELLS, FAST_MOMENT, FAST_VISITS],
                         ids=["slow-spells", "one-fast-check", "fast-visits"])
def test_the_profile_divides_the_host_out_of_the_layer_times(synthetic_backend, tmp_path, host):
    """Layer rows come out as on a quiet host whether the host has slow spells, one check runs far faster than
    the rest, or a visit in seven runs fast (measured on the AVX2 host, where the fastest check as the quiet time
    stored a whole profile 1.3x too fast)."""
    from latprune import pipeline

    analysis = pipeline.analyse(pipeline.load("cifar:resnet20"))
    settings = ProfileSettings(widths=8, variants=12, rounds=3, runs=2, profiled_runs=2, warmup=0, min_round_ms=0.0,
                               global_warmup_s=0.0, anchors=12, reference_every=1)

    def layer_medians(db):
        with ProfileStore(db, readonly=True) as store:
            device = store.find_device(store.summaries()[0].fingerprint)
            return ({t.signature.key(): t.measurement.median_ms for t in store.layer_timings(device, "synthetic")},
                    store.drift_checks(device, "synthetic", analysis.key))

    pipeline.profile(analysis, "synthetic", db=tmp_path / "quiet.sqlite", settings=settings, progress=False)
    start = synthetic_backend.calls
    slowdown, extreme = host
    synthetic_backend.slowdown = lambda call: slowdown(call - start)
    pipeline.profile(analysis, "synthetic", db=tmp_path / "host.sqlite", settings=settings, progress=False)
    quiet, _ = layer_medians(tmp_path / "quiet.sqlite")
    spells, checks = layer_medians(tmp_path / "host.sqlite")
    assert max(checks) / min(checks) == pytest.approx(max(extreme, 1 / extreme))  # the host did what it says
    assert set(spells) == set(quiet)
    close = [abs(spells[k] / quiet[k] - 1) <= 0.02 for k in quiet]
    assert statistics.mean(close) >= 0.9, f"{sum(close)} of {len(close)} layer times within 2%"
