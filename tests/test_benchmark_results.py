"""A benchmark's result file grows by models run later only when they were measured on the same machine and noise;
a pareto run resumes only rows measured on this machine."""

import json

import pytest

import benchmarks.planner_budget as planner_budget
from benchmarks.common import environment
from benchmarks.host_noise import noise_spec


def _write(tmp_path, env: dict, noise) -> None:
    cases = [{"model": "torchvision:resnet18", "fraction": 0.5}, {"model": "torchvision:mobilenet_v2", "fraction": 0.5}]
    payload = {"environment": env, "cases": cases, "host_noise": noise and noise.to_json()}
    (tmp_path / "budget.json").write_text(json.dumps(payload))


def _other_cpu() -> str:
    """A CPU identity that is not this machine's, whichever machine runs the tests."""
    other = "vendor_id AuthenticAMD cpu family 99 model 1"
    assert environment()["cpu_id"] != other
    return other


def test_other_models_cases_are_kept_with_their_date_and_the_rerun_model_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(planner_budget, "RESULTS", tmp_path)
    noise = noise_spec("spells")
    _write(tmp_path, {**environment(), "date": "2026-12-04 12:49 UTC"}, noise)
    kept = planner_budget.earlier_cases("budget", ["torchvision:mobilenet_v2"], noise)
    assert kept == [{"measured_on": "2026-12-04 12:49 UTC", "model": "torchvision:resnet18", "fraction": 0.5}]
    assert planner_budget.earlier_cases("absent", ["torchvision:mobilenet_v2"], noise) == []


def test_cases_from_another_machine_or_other_noise_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(planner_budget, "RESULTS", tmp_path)
    _write(tmp_path, {**environment(), "cpu_id": _other_cpu()}, None)
    with pytest.raises(SystemExit, match="another machine"):
        planner_budget.earlier_cases("budget", ["torchvision:mobilenet_v2"], None)
    _write(tmp_path, environment(), None)
    with pytest.raises(SystemExit, match="other host noise"):
        planner_budget.earlier_cases("budget", ["torchvision:mobilenet_v2"], noise_spec("spells"))


def test_pareto_resumes_rows_from_this_machine_only(tmp_path) -> None:
    from benchmarks.pareto import resumed_rows

    cache = tmp_path / "rows.json"
    assert resumed_rows(cache) == {}
    rows = {"resnet20@0.7": [{"model": "resnet20", "fraction": 0.7, "method": "latprune"}]}
    cache.write_text(json.dumps({"environment": environment(), "rows": rows}))
    assert resumed_rows(cache) == rows
    cache.write_text(json.dumps({"environment": {**environment(), "cpu_id": _other_cpu()}, "rows": rows}))
    with pytest.raises(SystemExit, match="family 99 model 1, not this one"):
        resumed_rows(cache)
    cache.write_text(json.dumps(rows))  # an older cache that does not say where it was measured
    with pytest.raises(SystemExit, match="an unrecorded machine"):
        resumed_rows(cache)


def _pareto_row(method: str, top1: float, vs_latprune: float, measured: float = 0.5) -> dict:
    return {"model": "resnet20", "fraction": 0.5, "method": method, "recovery": "two-stage", "top1": top1,
            "vs_latprune": vs_latprune, "measured_over_dense": measured * vs_latprune, "dense_top1": 0.81}


def test_pareto_goal_counts_no_baseline_measured_faster_that_scores_lower() -> None:
    """A baseline measured faster than latprune beyond the +-2% match is no evidence when it scores lower: with
    only such baselines the goal is not shown; one that scores higher still counts; latprune over its budget is said."""
    from benchmarks.pareto import goal_lines

    faster_only = goal_lines([_pareto_row("latprune", 0.62, 1.0, measured=0.567),
                              _pareto_row("depth-only", 0.35, 0.744), _pareto_row("latprune-width", 0.18, 0.947)])
    assert "measured 0.567x of dense" in faster_only[0] and "over its budget" in faster_only[0]
    assert "no comparison at equal latency, goal NOT shown" in faster_only[1] and ": met" not in "".join(faster_only)
    matched = goal_lines([_pareto_row("latprune", 0.62, 1.0), _pareto_row("depth-only", 0.55, 0.99),
                          _pareto_row("uniform", 0.61, 0.90)])
    assert "+7.00 points" in matched[0] and matched[0].endswith(": met")
    assert "left out of the goal" in matched[1] and "uniform 61.00% at 0.900x" in matched[1]
    beaten = goal_lines([_pareto_row("latprune", 0.62, 1.0), _pareto_row("depth-only", 0.65, 0.90)])
    assert "-3.00 points" in beaten[0] and beaten[0].endswith("NOT met")


def test_pareto_goal_says_whether_the_repeated_final_measurement_agreed() -> None:
    """The final measurement is repeated after recovery; the goal lines say whether the ratios held (within the +-2%
    match) or moved with the host's state, with both dense latencies."""
    from benchmarks.pareto import goal_lines

    def measured_twice(method: str, top1: float, first: float, again: float) -> dict:
        return {**_pareto_row(method, top1, first / 0.5), "dense_ms": 1.94, "dense_ms_again": 1.36,
                "measured_over_dense_again": again}

    steady = goal_lines([measured_twice("latprune", 0.62, 0.5, 0.505), measured_twice("depth-only", 0.55, 0.5, 0.492)])
    assert any("dense 1.940 then 1.360 ms" in line and line.endswith("agree within 2%") for line in steady)
    moved = goal_lines([measured_twice("latprune", 0.62, 0.531, 0.477), measured_twice("depth-only", 0.55, 0.52, 0.52)])
    line = next(line for line in moved if "repeated after recovery" in line)
    assert "latprune 0.531 -> 0.477" in line and "DISAGREE by up to -10.2%" in line
    stated = {"quiet_dense_ms": 1.36, "slow_state_rounds": 14, "in_quiet_state": True, "slow_state_rounds_again": 60,
              "in_quiet_state_again": False}
    line = next(line for line in goal_lines([{**measured_twice("latprune", 0.62, 0.5, 0.505), **stated},
                                             {**measured_twice("depth-only", 0.55, 0.5, 0.492), **stated}])
                if "repeated after recovery" in line)
    assert "ms; slow-state rounds left out 14 then 60; the host stayed in its slow state in the repeat measurement)" \
        in line


def test_imagenet_goal_checks_the_margin_at_1_5x_and_says_whether_the_repeat_agreed() -> None:
    from benchmarks.imagenet import goal_lines

    def row(method: str, top1: float, first: float, again: float) -> dict:
        return {"fraction": 1 / 1.5, "method": method, "recovery": "two-stage", "top1": top1, "dense_top1": 0.872,
                "measured_over_dense": first, "vs_latprune": first / 0.66, "dense_ms": 5.7, "dense_ms_again": 5.9,
                "measured_over_dense_again": again}

    lines = goal_lines([row("latprune", 0.687, 0.66, 0.665), row("uniform", 0.60, 0.65, 0.655)])
    assert lines[0].startswith("- 1.5x (measured 0.660 of dense): latprune 68.7%")
    assert "best other uniform 60.0% (+8.7 points): goal +2 met" in lines[0]
    assert "latprune 0.660 -> 0.665, uniform 0.650 -> 0.655" in lines[1] and lines[1].endswith("agree within 2%")


def test_imagenet_input_size_reads_a_finished_run_only_for_the_same_request_on_this_machine(tmp_path, monkeypatch):
    from benchmarks import imagenet_input_size as bench
    from latprune import pipeline

    ran = []
    monkeypatch.setattr(bench, "latprune_run", lambda arguments, out: ran.append(arguments) or {"ran": True})
    record = {"model": bench.SPEC, "device": pipeline.this_device("ort-cpu"),
              "latency": {"backend": "ort-cpu", "budget": {"speedup": 1.5}},
              "input_size": {"input_shape": [1, 3, 192, 192], "adaptation": {"kl_before": 0.3, "kl_after": 0.1}}}
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [record]}))
    assert bench.run_once(1.5, 192, tmp_path, tmp_path / "p.sqlite", rerun=False) == record and ran == []
    for speedup, size, rerun in ((1.5, 176, False), (2.0, 192, False), (1.5, 192, True)):
        assert bench.run_once(speedup, size, tmp_path, tmp_path / "p.sqlite", rerun=rerun) == {"ran": True}
    assert ran[-1][ran[-1].index("--input-size") + 1] == "192" and "--speedup" in ran[-1]
    assert "--no-size-adaptation" not in ran[-1]
    # a run without the size adaptation answers only a request without it
    assert bench.run_once(1.5, 192, tmp_path, tmp_path / "p.sqlite", rerun=False, adapt=False) == {"ran": True}
    assert "--no-size-adaptation" in ran[-1]
    assert bench.adaptation_text(record["input_size"]) == "0.300 -> 0.100"
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [{**record, "device": "another"}]}))
    assert bench.run_once(1.5, 192, tmp_path, tmp_path / "p.sqlite", rerun=False) == {"ran": True}
    assert bench.parse_runs("1.5:192,2:176") == [(1.5, 192), (2.0, 176)]
    # a size the run chose answers only a request for auto, and auto only a run that chose
    chose = {**record, "input_size": {**record["input_size"], "choice": {"size": 192}}}
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [chose]}))
    assert bench.run_once(1.5, "auto", tmp_path, tmp_path / "p.sqlite", rerun=False) == chose
    assert bench.run_once(1.5, 192, tmp_path, tmp_path / "p.sqlite", rerun=False) == {"ran": True}
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [record]}))
    assert bench.run_once(1.5, "auto", tmp_path, tmp_path / "p.sqlite", rerun=False) == {"ran": True}
    assert ran[-1][ran[-1].index("--input-size") + 1] == "auto"
    assert bench.parse_runs("1.25:auto,2:160") == [(1.25, "auto"), (2.0, 160)]


@pytest.mark.parametrize("dense_ms, band_top_ms, plan_speedup, says", [
    (5.0, 2.5, 2.0, "dense at 224"),  # a later round's plan, made for the speedup asked
    (5.0, 2.5, 1.236, "dense at 224"),  # the first round's plan kept: made for what the size left
    (3.09, 2.5, 1.236, "dense at its size, for 1.236x"),  # the first version of the loop
])
def test_imagenet_input_size_reads_what_the_loop_timed_against_from_its_band(dense_ms, band_top_ms, plan_speedup,
                                                                              says):
    from benchmarks import imagenet_input_size as bench

    run = {"latency": {"plan_budget": {"speedup": plan_speedup},
                       "verification": {"dense_measured_ms": dense_ms, "band_ms": [2.4, band_top_ms]}}}
    assert bench.loop_reference(run, 2.0) == says


def test_imagenet_input_size_says_when_the_size_alone_met_the_budget():
    from benchmarks import imagenet_input_size as bench

    unverified = {"verified": False, "reason": "at 176x176 the dense network alone runs at 0.650 ..."}
    run = {"latency": {"verification": unverified}, "plan": {"method": "input-size"}}
    assert bench.loop_reference(run, 1.5) == "none: nothing planned"
    assert bench.loop_reference({**run, "plan": {"method": "latency-search"}}, 1.5) == "not verified"
