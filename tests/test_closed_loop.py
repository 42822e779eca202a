"""The closed planning loop: stops in band, learns a biased device, never returns a plan over budget."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from latprune.budget import Budget, BudgetRequest
from latprune.errors import LatpruneError
from latprune.network import Measurement
from latprune.planner.closed_loop import LoopSettings, closed_loop
from latprune.planner.plan import GroupPlan, Plan
from latprune.planner.records import VerificationRecord

# ---------------------------------------------------------------- the loop against fakes


@dataclass
class _Timing:
    variant: Measurement
    dense: Measurement
    new_layer_rows: int = 0
    seconds: float = 0.0


def _measured(ms: float) -> Measurement:
    return Measurement.from_samples([[ms]])


class _LinearModel:
    """One group of width 1..1000; the model predicts ``unit`` ms per channel (``learn`` may move it)."""

    def __init__(self, unit: float = 0.01, learns_to: float | None = None):
        self.unit, self.learns_to, self.solved, self.learned = unit, learns_to, [], 0

    def solve(self, budget: Budget) -> Plan:
        width = int(budget.target_ms / self.unit)
        if width < 1:
            raise LatpruneError(f"budget {budget.target_ms:.4g} ms is below the fastest achievable plan")
        width = min(width, 1000)
        self.solved.append(budget.target_ms)
        return _plan(width, width * self.unit)

    def predict(self, plan: Plan) -> float:
        return plan.groups[0].width * self.unit

    def fastest_ms(self) -> float:
        return self.unit

    def learn(self) -> None:
        self.learned += 1
        if self.learns_to is not None:
            self.unit = self.learns_to


class _Narrowest400(_LinearModel):
    """No plan narrower than 400 channels."""

    def solve(self, budget):
        if budget.target_ms < 400 * self.unit - 1e-12:
            raise LatpruneError(f"budget {budget.target_ms:.4g} ms is below the fastest achievable plan")
        return super().solve(budget)

    def fastest_ms(self) -> float:
        return 400 * self.unit


class _Device:
    """True latency: ``offset`` + ``per_channel`` ms per channel (or an override by width); dense 10 ms."""

    device = "fake"

    def __init__(self, per_channel: float, overrides: dict[int, float] | None = None, offset: float = 0.0):
        self.per_channel, self.overrides, self.offset, self.timed = per_channel, overrides or {}, offset, []

    def time(self, widths):
        width = widths["g"]
        self.timed.append(width)
        return _Timing(_measured(self.overrides.get(width, self.offset + width * self.per_channel)), _measured(10.0))


def _plan(width: int, predicted: float) -> Plan:
    return Plan(model="m", input_shape=[1, 3, 8, 8], backend="fake", cost="latency", method="latency-dp",
                importance="l2", budget_ms=None, predicted_ms=predicted, dense_predicted_ms=10.0, importance_kept=1.0,
                macs=0, dense_macs=0, groups=[GroupPlan("g", width, 1000, list(range(width)))])


def _loop(model, device, budget_ms: float = 5.0, **settings) -> Plan:
    request = BudgetRequest(budget_ms=budget_ms)
    return closed_loop(model, device, request, request.resolve(10.0, "predicted dense"), LoopSettings(**settings))


def test_a_verified_plan_is_immutable_and_its_file_reads_back_the_same(tmp_path):
    plan = _loop(_LinearModel(learns_to=0.011), _Device(per_channel=0.011))
    assert plan.verification.rounds_used >= 2 and plan.verification.chosen is plan.verification.rounds[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.verification = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.verification.rounds[0].measured_ms = 0.0
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan and again.verification.rounds[0].learn_s == plan.verification.rounds[0].learn_s
    assert again.verification.rounds[-1].learn_s is None  # no refit after the round in band


def test_the_loop_stops_at_the_first_plan_in_band():
    device = _Device(per_channel=0.01)  # the model is exact
    plan = _loop(_LinearModel(), device)
    assert device.timed == [492] and plan.groups[0].width == 492  # aimed at the band's centre, 0.985 x 5 ms
    assert plan.verification.status == "in band" and plan.verification.rounds_used == 1
    assert plan.verification.band_ms == pytest.approx((4.85, 5.0))


def test_a_device_ten_percent_slower_than_predicted_converges_below_budget():
    device = _Device(per_channel=0.011)
    model = _LinearModel()
    plan = _loop(model, device)
    verification = plan.verification
    assert verification.rounds_used <= 3 and verification.status == "in band"
    assert 4.85 <= verification.measured_ms <= 5.0
    first, second = verification.rounds[:2]
    assert not first.meets and first.measured_ms == pytest.approx(1.1 * first.predicted_ms)
    assert second.correction == pytest.approx(1.1, rel=1e-3)  # measured / predicted of the first plan
    assert model.learned == 1  # refitted once between the two rounds


def test_a_model_that_learns_the_device_needs_no_correction():
    device = _Device(per_channel=0.011)
    plan = _loop(_LinearModel(learns_to=0.011), device)
    assert plan.verification.rounds[1].correction == pytest.approx(1.0)
    assert plan.verification.status == "in band"


class _NoisyDevice(_Device):
    """Nine timing rounds per plan: the variant's per-round times spread +-``spread`` around the true latency."""

    def __init__(self, per_channel: float, spread: float):
        super().__init__(per_channel)
        self.spread = spread

    def time(self, widths):
        self.timed.append(widths["g"])
        true = widths["g"] * self.per_channel
        rounds = [[true * (1 + self.spread * (k - 4) / 4)] for k in range(9)]
        return _Timing(Measurement.from_samples(rounds), Measurement.from_samples([[10.0]] * 9))


@pytest.mark.parametrize("spread, rounds", [(0.05, 1), (0.005, 2)])
def test_below_the_band_within_its_interval_is_in_band(spread, rounds):
    """Measured 2.5% under the band: with a +-5% interval that reaches the band it is kept; measured tightly it is
    below the band and re-planned."""
    device = _NoisyDevice(per_channel=0.0097, spread=spread)  # the plan aimed at 4.925 ms measures 4.77 ms
    plan = _loop(_LinearModel(), device)
    first = plan.verification.rounds[0]
    assert first.measured_ms < first.band_ms[0]
    assert first.verdict() == ("in band" if rounds == 1 else "below band")
    assert plan.verification.rounds_used == rounds and plan.verification.measured_ms <= 5.0


def test_no_plan_over_budget_is_returned_when_a_measured_plan_met_it():
    # Round 1 lands below the band; every later plan measures over budget (a slow kernel at those widths).
    device = _Device(per_channel=0.009, overrides={w: 5.3 for w in range(500, 1001)})
    plan = _loop(_LinearModel(), device, max_rounds=4)
    verification = plan.verification
    assert verification.status == "met the budget, outside the band"
    assert verification.measured_ms <= 5.0 and plan.groups[0].width == device.timed[0]
    assert any(not r.meets for r in verification.rounds)


def test_when_the_correction_asks_for_less_than_the_fastest_plan_the_fastest_plan_is_measured():
    device = _Device(per_channel=0.0125)  # round 1 measures 25% over; the corrected aim lies below width 400
    plan = _loop(_Narrowest400(), device)
    assert device.timed == [492, 400] and plan.groups[0].width == 400
    assert plan.verification.status == "in band" and plan.verification.measured_ms == pytest.approx(5.0)


def test_a_budget_just_below_the_predicted_fastest_plan_is_tried_on_the_device():
    device = _Device(per_channel=0.008)  # the device is 20% faster than the model: width 400 takes 3.2 ms
    plan = _loop(_Narrowest400(), device, budget_ms=3.5)  # predicted fastest 4 ms: 12.5% below, within reach
    assert device.timed[0] == 400 and plan.verification.measured_ms <= 3.5
    with pytest.raises(LatpruneError, match="below the fastest achievable plan"):
        _loop(_Narrowest400(), _Device(per_channel=0.008), budget_ms=2.9)  # 27.5% below: refused unmeasured


class _StrictNarrowest400(_Narrowest400):
    """Refuses any aim below its fastest plan's cost, by however little (as the solver does)."""

    def solve(self, budget):
        if budget.target_ms < self.fastest_ms():
            raise LatpruneError(f"budget {budget.target_ms:.4g} ms is below the fastest achievable plan")
        return _LinearModel.solve(self, budget)


def test_the_fastest_plan_is_measured_when_its_cost_does_not_survive_rounding():
    model = _StrictNarrowest400(unit=0.0123)  # fastest 4.92 ms; (4.92 / 4.159) * 4.159 < 4.92 in floating point
    device = _Device(per_channel=0.0102)
    plan = _loop(model, device, budget_ms=4.159)
    assert device.timed[0] == 400 and plan.groups[0].width == 400 and plan.verification.measured_ms <= 4.159


def test_no_measured_plan_meeting_the_budget_is_an_error_naming_the_fastest():
    device = _Device(per_channel=0.001, offset=6.0)  # a 6 ms floor the model does not know
    with pytest.raises(LatpruneError, match=r"no plan met the budget as measured.*fastest measured 6\.3\d+ ms"):
        _loop(_LinearModel(), device, max_rounds=2)


def test_below_the_band_a_coarse_width_grid_is_tried_at_the_band_top():
    class Grid50(_LinearModel):
        """Widths in steps of 50 channels only (0.5 ms): the band's centre may fall between two widths."""

        def solve(self, budget):
            width = min(1000, int(budget.target_ms / self.unit) // 50 * 50)
            return _plan(width, width * self.unit)

    device = _Device(per_channel=0.0099)  # width 450 measures 4.455 ms: below the band [4.85, 5]
    plan = _loop(Grid50(), device, budget_ms=5.0, tol=0.03)
    assert device.timed == [450, 500] and plan.groups[0].width == 500  # 4.95 ms: in band once aimed at the top
    assert plan.verification.status == "in band"


def test_the_loop_stops_when_the_solver_repeats_a_measured_plan():
    class Stuck(_LinearModel):
        def solve(self, budget):
            return _plan(400, 4.0)

    plan = _loop(Stuck(), _Device(per_channel=0.01))
    assert plan.verification.rounds_used == 1 and "already measured" in plan.verification.stop
    assert plan.verification.status == "met the budget, outside the band"


def test_a_speedup_is_judged_against_the_dense_model_measured_in_the_same_rounds():
    class SlowDense(_Device):
        def time(self, widths):
            return _Timing(super().time(widths).variant, _measured(12.0))

    request = BudgetRequest(speedup=2.0)
    plan = closed_loop(_LinearModel(), SlowDense(per_channel=0.01), request, request.resolve(10.0, "predicted dense"),
                       LoopSettings())
    assert plan.verification.budget_ms == pytest.approx(6.0)  # 12 ms measured dense / 2, not 10 / 2
    assert plan.verification.status == "in band"


def test_loop_settings_are_checked():
    for bad in ({"tol": 0}, {"tol": 0.6}, {"max_rounds": 0}, {"timing_rounds": 1}, {"reach": 1.0}):
        with pytest.raises(LatpruneError):
            LoopSettings(**bad)


# ---------------------------------------------------------------- the whole stage on a synthetic backend


def test_the_pipeline_loop_aims_by_the_dense_model_on_a_device_ten_percent_slower_than_its_profile(
        profiled, synthetic_backend):
    from latprune import pipeline
    from latprune.profiler.api import ProfileStore

    p = profiled
    dense_ms = pipeline.predict(p.perf, p.fitted, p.analysis.loaded, "synthetic")["predicted_ms"]
    synthetic_backend.scale = 1.1  # the device is now 10% slower than everything profiled
    request = BudgetRequest(budget_ms=dense_ms / 1.3)
    verify = pipeline.Verification(db=p.db, timing=p.timing, progress=False)
    plan = pipeline.plan(p.analysis, request, p.perf, p.fitted, "synthetic", verify=verify)
    verification = plan.verification
    assert verification.verified and verification.rounds_used <= 3
    assert verification.measured_ms <= verification.budget_ms
    first = verification.rounds[0]
    # the dense model measured 10% slower than predicted: the first plan aims 10% lower than the profile says
    assert first.correction == pytest.approx(1.1, rel=0.02)
    assert first.meets and first.measured_ms == pytest.approx(1.1 * first.predicted_ms, rel=0.03)
    assert first.new_layer_rows > 0  # the plan's layers were stored
    with ProfileStore(p.db, readonly=True) as store:
        keys = {n.variant_key for n in store.network_timings(store.find_device(p.fitted.device), "synthetic")}
    assert len(keys) >= 16 + len(verification.rounds)  # every measured plan is a profile row now
    json.dumps(plan.to_json(), allow_nan=False)


def test_a_budget_in_ms_is_a_fraction_of_the_dense_model_as_measured(profiled, synthetic_backend):
    """A profile that predicts the dense model 40% fast: a budget above its prediction but below the device's
    dense latency is planned (it was refused as "nothing to prune"); round 1 aims by the dense correction."""
    from latprune import pipeline

    p = profiled
    dense_ms = pipeline.predict(p.perf, p.fitted, p.analysis.loaded, "synthetic")["predicted_ms"]
    synthetic_backend.scale = 1.6
    request = BudgetRequest(budget_ms=1.1 * dense_ms)
    with pytest.raises(LatpruneError, match="already meets"):  # open loop: the prediction is all there is
        pipeline.plan(p.analysis, request, p.perf, p.fitted, "synthetic",
                      verify=pipeline.Verification(enabled=False))
    verify = pipeline.Verification(db=p.db, timing=p.timing, progress=False)
    plan = pipeline.plan(p.analysis, request, p.perf, p.fitted, "synthetic", verify=verify)
    verification = plan.verification
    assert verification.verified and verification.measured_ms <= verification.budget_ms
    first = verification.rounds[0]
    assert first.correction > 1.2  # the dense model measured slower than predicted
    assert first.aim_ms == pytest.approx(1.1 * dense_ms * (1 - LoopSettings().tol / 2) / first.correction)
    with pytest.raises(LatpruneError, match="measures .* already within"):
        pipeline.plan(p.analysis, BudgetRequest(budget_ms=3 * dense_ms), p.perf, p.fitted, "synthetic", verify=verify)


def test_no_verify_and_foreign_profiles_are_labelled(profiled):
    import dataclasses

    from latprune import pipeline

    p, request = profiled, BudgetRequest(speedup=1.2)
    plan = pipeline.plan(p.analysis, request, p.perf, p.fitted, "synthetic",
                         verify=pipeline.Verification(enabled=False))
    assert plan.verification == VerificationRecord.unverified("verification off (--no-verify)")
    elsewhere = dataclasses.replace(p.fitted, device="0123456789abcdef")
    plan = pipeline.plan(p.analysis, request, p.perf, elsewhere, "synthetic", verify=pipeline.Verification(db=p.db))
    assert not plan.verification.verified and "not verified on the device" in plan.verification.reason


def test_validation_reports_the_planners_choices_apart_from_random_variants(profiled, tmp_path):
    from latprune import pipeline
    from latprune.perfmodel.validate import validate_model

    p = profiled
    plan_like = pipeline.plan_like_widths(p.analysis, p.perf, p.fitted, "synthetic")
    assert [f for f, _ in plan_like] == [f for f in pipeline.PLAN_LIKE_FRACTIONS if f >= plan_like[0][0]]
    assert all(set(w) == {g.id for g in p.analysis.groups} for _, w in plan_like)
    result = validate_model(p.analysis, "synthetic", p.perf, p.fitted.alignment_step, variants=4, rounds=2, runs=2,
                            plan_like=plan_like, out_dir=tmp_path / "v")
    kinds = [r["kind"] for r in result["per_variant"]]
    assert p.analysis.branches  # as many random variants again with residual branches removed, apart
    assert kinds == ["random"] * 4 + ["depth"] * 4 + ["plan"] * len(plan_like)
    assert all(r["removed_branches"] >= 1 for r in result["per_variant"] if r["kind"] == "depth")
    assert result["n"] == 4 and result["depth"]["n"] == 4 and result["plan_like"]["n"] == len(plan_like)
    plan_errors = [abs(r["error"]) for r in result["per_variant"] if r["kind"] == "plan"]
    assert result["plan_like"]["mape"] == pytest.approx(sum(plan_errors) / len(plan_errors))
    assert (tmp_path / "v").is_dir() and len(list((tmp_path / "v").glob("*.png"))) == 1


def test_a_slow_spell_of_the_host_cancels_in_the_paired_ratio():
    from latprune.network import paired_ratio

    # A 2x slow spell starts during round 2, after the dense visit and before the plan's, and lasts to round 4.
    dense = Measurement.from_samples([[10.0, 10.2], [10.1, 10.1], [20.0, 20.4], [20.2, 20.2], [10.0, 10.1]])
    plan = Measurement.from_samples([[5.0, 5.1], [10.0, 10.2], [10.1, 10.1], [10.0, 10.0], [5.0, 5.05]])
    assert paired_ratio(plan, dense) == pytest.approx(0.5, rel=0.02)
    assert plan.median_ms / dense.median_ms == pytest.approx(1.0, rel=0.02)  # pooled medians: no speedup at all
    assert paired_ratio(Measurement.from_samples([[4.0]]), dense) == pytest.approx(4.0 / dense.median_ms)


def test_a_speedup_budget_is_judged_by_the_paired_ratio():
    class SpellyDevice(_Device):
        """A 2x slow spell begins in round 2 between the plan's visit and the dense model's, and lasts to round 4."""

        def time(self, widths):
            ms = widths["g"] * self.per_channel
            return _Timing(Measurement.from_samples([[ms], [ms], [2 * ms], [2 * ms], [ms]]),
                           Measurement.from_samples([[10.0], [20.0], [20.0], [20.0], [10.0]]))

    request = BudgetRequest(speedup=2.0)
    plan = closed_loop(_LinearModel(), SpellyDevice(per_channel=0.01), request,
                       request.resolve(10.0, "predicted dense"), LoopSettings())
    first = plan.verification.rounds[0]
    assert first.relative_to_dense == pytest.approx(0.492)  # 4.92 ms against 10 ms, round by round
    assert first.raw_median_ms / first.dense_measured_ms == pytest.approx(0.246)  # pooled: half of that
    assert plan.verification.status == "in band" and plan.verification.rounds_used == 1


def test_the_plan_command_verifies_by_default_and_prints_the_rounds(profiled, synthetic_backend, capsys):
    from latprune import pipeline
    from latprune.cli import main

    p = profiled
    dense_ms = pipeline.predict(p.perf, p.fitted, p.analysis.loaded, "synthetic")["predicted_ms"]
    synthetic_backend.scale = 1.1
    common = ["plan", "--model", "cifar:resnet20", "--backend", "synthetic", "--db", str(p.db),
              "--budget-ms", str(dense_ms / 1.3)]
    assert main(common + ["--no-verify"]) == 0  # first: the loop's rows would make it refit the model
    assert "not verified on the device: verification off (--no-verify)" in capsys.readouterr().out
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "round  aim ms  predicted ms  measured ms" in out and "verified on this device: measured" in out
    assert main(common + ["--tol", "0.7"]) == 1  # refused before anything is loaded or timed
    assert "--tol must be in (0, 0.5)" in capsys.readouterr().err


def test_verify_closes_the_loop_on_a_plan_made_elsewhere_starting_from_it(profiled, synthetic_backend, tmp_path,
                                                                           capsys):
    """`latprune verify`: round 1 measures the plan as made (open loop, elsewhere); a device 40% slower than its
    profile puts it over its millisecond budget, so the loop re-plans until it is in band. A plan for another device
    or model is refused in one line before any timing."""
    from latprune.cli import main
    from latprune.planner.plan import Plan

    from latprune import pipeline

    p = profiled
    common = ["--model", "cifar:resnet20", "--db", str(p.db), "--json"]
    budget_ms = pipeline.predict(p.perf, p.fitted, p.analysis.loaded, "synthetic")["predicted_ms"] / 1.3
    assert main(["plan", *common, "--backend", "synthetic", "--budget-ms", str(budget_ms), "--no-verify",
                 "--margin", "0", "--out", str(tmp_path / "made.json")]) == 0
    made = Plan.load(tmp_path / "made.json")
    assert made.verification.verified is False
    capsys.readouterr()
    synthetic_backend.scale = 1.4
    assert main(["verify", "--plan", str(tmp_path / "made.json"), *common, "--out", str(tmp_path / "v.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    rounds = result["verification"]["rounds"]
    assert rounds[0]["predicted_ms"] == pytest.approx(made.predicted_ms)  # round 1: the plan as it was made
    assert rounds[0]["meets"] is False and len(rounds) >= 2  # over budget on this slower device
    assert result["verification"]["verified"] and Plan.load(tmp_path / "v.json").verification.verified

    other = {**made.to_json(), "device": "0123456789abcdef"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["verify", "--plan", str(tmp_path / "other.json"), *common, "--out", str(tmp_path / "o.json")]) == 1
    assert "planned for device 0123456789abcdef" in capsys.readouterr().err
    assert main(["verify", "--plan", str(tmp_path / "made.json"), "--model", "cifar:resnet32", "--db", str(p.db),
                 "--out", str(tmp_path / "o.json")]) == 1
    assert "is a plan for cifar:resnet20" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
