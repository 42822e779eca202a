"""Planner: the DP is optimal (brute force), never over budget, and plans build real networks."""

import itertools
import json

import numpy as np
import pytest
import torch

import latprune.planner.structure as structure
from fixtures.budgets import budget_between
from fixtures.fake_perf import MacsLatency
from latprune.cli import main
from latprune.errors import LatpruneError
from latprune.groups import ChannelGroup
from latprune.models import load_model
from latprune.planner.api import flops_plan, latency_plan, prepare, tp_global_plan, uniform_plan_for_budget
from latprune.planner.importance import channel_importance
from latprune.analysis import analyse
from latprune.budget import Budget, BudgetRequest
from latprune.planner.plan import Plan
from latprune.planner.problem import LayerTerm, PlanningProblem
from latprune.planner.solver import Infeasible, solve
from latprune.planner.widths import WidthPolicy, kept_channels
from latprune.network import network_signatures
from latprune.pruned_file import prune_loaded


def chain_layers(n):
    return ([LayerTerm("stem", (), 3, 0, 0)] + [LayerTerm(f"conv{i}", (i - 1,), 0, i, 0) for i in range(1, n)]
            + [LayerTerm("fc", (n - 1,), 0, None, 10)])


def residual_layers():
    """Two stages: hub 0 with blocks (inner 1, 2), hub 3 entered by a block with inner 4 and a
    downsample, then a block with inner 5; the classifier reads hub 3."""
    return [LayerTerm("stem", (), 3, 0, 0),
            LayerTerm("b1.c1", (0,), 0, 1, 0), LayerTerm("b1.c2", (1,), 0, 0, 0),
            LayerTerm("b2.c1", (0,), 0, 2, 0), LayerTerm("b2.c2", (2,), 0, 0, 0),
            LayerTerm("b3.c1", (0,), 0, 4, 0), LayerTerm("b3.c2", (4,), 0, 3, 0), LayerTerm("b3.ds", (0,), 0, 3, 0),
            LayerTerm("b4.c1", (3,), 0, 5, 0), LayerTerm("b4.c2", (5,), 0, 3, 0),
            LayerTerm("fc", (3,), 0, None, 10)]


def random_problem(rng, layers, n):
    """Random widths, concave importance, and a non-separable cost with a misalignment penalty."""
    full = [int(rng.integers(4, 9)) for _ in range(n)]
    candidates = [np.array(sorted(rng.choice(np.arange(1, f), size=3, replace=False).tolist() + [f])) for f in full]
    values = [np.cumsum(rng.random(len(c))) for c in candidates]
    coef = rng.random((len(layers), 3))

    def cost(rows):
        return np.array([coef[i, 0] * cin * cout * (1 + 0.3 * (cin % 4 != 0)) + coef[i, 1] * cin + coef[i, 2] * cout
                         for i, cin, cout in rows])

    return PlanningProblem([f"g{i}" for i in range(n)], candidates, values, layers, cost, constant=0.5)


def brute_force(problem, budget):
    best = None
    for choice in itertools.product(*(range(len(c)) for c in problem.candidates)):
        if problem.total_cost(choice) <= budget:
            value = problem.total_value(choice)
            best = value if best is None else max(best, value)
    return best


def random_budget(rng, problem):
    costs = [problem.total_cost(c) for c in itertools.product(*(range(len(c)) for c in problem.candidates))]
    return float(np.quantile(costs, rng.uniform(0.05, 0.9)))


@pytest.mark.parametrize("shape,limit", [("chain", None), ("residual", None), ("chain", 100), ("residual", 100)],
                         ids=["chain-enumerated", "residual-stages", "chain-as-hub-path", "residual-small-items"])
def test_dp_optimum_equals_brute_force(shape, limit, monkeypatch):
    if limit:
        monkeypatch.setattr(structure, "ENUMERATION_LIMIT", limit)
    rng = np.random.default_rng(7)
    for _ in range(12):
        layers, n = (chain_layers(5), 5) if shape == "chain" else (residual_layers(), 6)
        problem = random_problem(rng, layers, n)
        budget = random_budget(rng, problem)
        solution = solve(problem, budget, bins=20000)  # fine enough that rounding never changes the optimum here
        assert solution.stats["method"] == "exact hub-chain DP"
        assert solution.cost <= budget
        assert solution.value == pytest.approx(brute_force(problem, budget), abs=1e-9)
    if limit and shape == "chain":
        assert solution.stats["promoted_hubs"] == 5 and solution.stats["hubs"] == 5
    if shape == "residual":
        assert solution.stats["hubs"] == 2


def test_plan_never_exceeds_the_budget_even_with_coarse_bins():
    rng = np.random.default_rng(3)
    for bins in (10, 50, 300):
        for _ in range(10):
            problem = random_problem(rng, residual_layers(), 6)
            budget = random_budget(rng, problem)
            try:
                solution = solve(problem, budget, bins=bins)
            except Infeasible:
                continue  # coarse rounding may leave nothing; never an over-budget plan
            assert solution.cost <= budget


def test_budget_below_the_fastest_plan_is_an_error_naming_it():
    problem = random_problem(np.random.default_rng(0), residual_layers(), 6)
    fastest = problem.total_cost(problem.fastest())
    with pytest.raises(Infeasible, match=f"fastest achievable plan \\({fastest:.4g}"):
        solve(problem, fastest * 0.99)


def test_concatenated_inputs_use_the_fallback_and_meet_the_budget():
    rng = np.random.default_rng(5)
    layers = [LayerTerm("c0", (), 3, 0, 0), LayerTerm("c1", (0,), 0, 1, 0),
              LayerTerm("c2", (0, 1), 0, 2, 0), LayerTerm("c3", (0, 1, 2), 0, None, 10)]
    for _ in range(8):
        problem = random_problem(rng, layers, 3)
        budget = random_budget(rng, problem)
        solution = solve(problem, budget, bins=5000)
        assert solution.stats["method"].startswith("fallback")
        assert "concatenation" in solution.stats["fallback_reason"]
        assert solution.cost <= budget
        assert solution.value >= 0.85 * brute_force(problem, budget)


def test_candidate_widths_follow_the_step_with_finer_steps_for_narrow_groups():
    policy = WidthPolicy(step=16, min_fraction=0.1, max_count=32)
    wide = ChannelGroup("a", ("a",), (), 256, 1, 0.1)
    assert policy.candidates(wide).tolist() == list(range(32, 257, 16))
    narrow = ChannelGroup("b", ("b",), (), 16, 1, 0.1)
    assert policy.candidates(narrow).tolist() == [2, 4, 6, 8, 10, 12, 14, 16]
    grouped = ChannelGroup("c", ("c",), (), 96, 3, 0.1)
    widths = policy.candidates(grouped)
    assert all(w % 3 == 0 for w in widths) and widths[-1] == 96
    huge = ChannelGroup("d", ("d",), (), 2048, 1, 0.1)
    widths = policy.candidates(huge)
    assert len(widths) == 32 and widths[-1] == 2048 and all(w % 16 == 0 for w in widths)


def test_grouped_layers_keep_the_same_offsets_in_every_slice():
    group = ChannelGroup("g", ("g",), (), 8, 2, 0.1)
    scores = np.array([0.1, 5, 0.2, 3, 9, 0.1, 0.3, 0.2])
    assert kept_channels(group, scores, 4) == [0, 1, 4, 5]  # offsets 0 and 1 score 9.1 and 5.1


@pytest.fixture(scope="module")
def resnet20():
    analysis = analyse(load_model("cifar:resnet20"))
    return analysis.loaded, analysis.groups, analysis.layout


@pytest.mark.parametrize("name", ["l1", "l2", "bn"])
def test_magnitude_scores_are_normalised_per_group(resnet20, name):
    loaded, groups, layout = resnet20
    scores = channel_importance(name, loaded.model, groups, layout)
    assert set(scores) == {g.id for g in groups}
    for g in groups:
        assert scores[g.id].shape == (g.width,)
        assert scores[g.id].mean() == pytest.approx(1.0)


def test_bn_scores_rank_channels_by_gamma(resnet20):
    loaded, groups, layout = resnet20
    group = groups[0]
    bn = dict(loaded.model.named_modules())[group.producers[1]]
    with torch.no_grad():
        bn.weight.copy_(torch.arange(1, group.width + 1, dtype=torch.float32))
    scores = channel_importance("bn", loaded.model, groups, layout)
    assert np.argsort(scores[group.id]).tolist() == list(range(group.width))


def test_data_criteria_need_calibration_images(resnet20):
    loaded, groups, layout = resnet20
    with pytest.raises(LatpruneError, match="needs calibration images"):
        channel_importance("taylor", loaded.model, groups, layout)


@pytest.mark.parametrize("name", ["taylor", "sensitivity"])
def test_data_criteria_score_every_channel(resnet20, name):
    loaded, groups, layout = resnet20
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = channel_importance(name, loaded.model, groups, layout, calib)
    for g in groups:
        assert scores[g.id].shape == (g.width,) and np.isfinite(scores[g.id]).all() and (scores[g.id] >= 0).all()
        assert scores[g.id].sum() > 0


@pytest.fixture(scope="module")
def resnet18_inputs():
    loaded = load_model("torchvision:resnet18", input_shape=(1, 3, 64, 64))
    return prepare(loaded, "l2", policy=WidthPolicy(step=16, max_count=3), perf=MacsLatency(), backend="fake")


@pytest.mark.slow  # 50 s: the toys below check the DP against brute force on residual structure
def test_resnet18_plan_is_exact_on_its_residual_structure(resnet18_inputs):
    inputs = resnet18_inputs
    budget = 0.6 * inputs.dense_ms()
    plan = latency_plan(inputs, Budget(budget, "given"), bins=20000)
    assert plan.solver["method"] == "exact hub-chain DP" and plan.solver["hubs"] == 4
    assert plan.predicted_ms <= budget
    problem = inputs.latency_problem()
    best = brute_force(problem, budget)  # 3 widths x 12 groups = 531,441 plans
    assert plan.solver["importance_value"] == pytest.approx(best)


def test_baselines_meet_the_same_budget(resnet18_inputs):
    inputs = resnet18_inputs
    budget = 0.7 * inputs.dense_ms()
    dp = latency_plan(inputs, Budget(budget, "given"))
    for planner in (flops_plan, uniform_plan_for_budget, tp_global_plan):
        plan = planner(inputs, Budget(budget, "given"))
        assert plan.predicted_ms <= budget
        assert plan.importance_kept <= dp.importance_kept + 1e-9 or planner is tp_global_plan


def test_plan_builds_a_network_of_the_planned_widths(resnet18_inputs, tmp_path):
    plan = latency_plan(resnet18_inputs, resnet18_inputs.resolve(BudgetRequest(speedup=1.5)))
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again.kept() == plan.kept()
    loaded = load_model("torchvision:resnet18", input_shape=(1, 3, 64, 64))
    pruned = prune_loaded(loaded, again.kept())
    modules = dict(pruned.model.named_modules())
    for g in again.groups:
        assert modules[g.id].out_channels == g.width
    assert pruned.model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_plan_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "latprune-plan", "version": 99}))
    with pytest.raises(LatpruneError, match="newer"):
        Plan.load(path)


def test_plan_and_prune_commands_on_a_real_profile(capsys, profiled_resnet20, tmp_path):
    plan_path, pruned_path = tmp_path / "plan.json", tmp_path / "pruned.pt"
    common = ["--model", "cifar:resnet20", "--backend", "torch-cpu", "--db", str(profiled_resnet20)]
    budget, _ = budget_between(profiled_resnet20, "torch-cpu", "cifar:resnet20")  # halfway from dense to fastest
    assert main(["plan", *common, "--budget-ms", str(budget), "--no-verify", "--out", str(plan_path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["predicted_ms"] <= plan["budget_ms"] == pytest.approx(budget / 1.03)  # unverified: 3% headroom
    assert plan["verification"] == {"verified": False, "reason": "verification off (--no-verify)"}
    assert plan["predicted_ms"] < plan["dense_predicted_ms"]
    assert plan["solver"]["bins"] == 2000 and plan["solver"]["live_states"] > 0
    assert main(["prune", "--model", "cifar:resnet20", "--plan", str(plan_path), "--out", str(pruned_path),
                 "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["widths"] == {g["id"]: g["width"] for g in plan["groups"]}
    assert pruned["params"] < pruned["dense_params"]

    assert main(["plan", *common, "--budget-ms", "0.0001"]) == 1
    assert "below the fastest achievable plan" in capsys.readouterr().err
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--out", str(pruned_path)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--out", str(pruned_path), "--force"]) == 0
    assert "pruned cifar:resnet20" in capsys.readouterr().out


def test_bisection_finds_the_largest_fitting_budget_and_keeps_the_best_result():
    from latprune.planner.search_steps import bisect_largest, thin_evenly

    tried = []

    def attempt(budget):
        tried.append(budget)
        return None if budget < 2.0 else budget  # nothing can be made under 2

    assert bisect_largest(attempt, lambda b: b <= 7.3, 0.0, 10.0, 30) == pytest.approx(7.3, abs=1e-6)
    assert tried[0] == 10.0 and min(tried) >= 0.0
    assert bisect_largest(lambda b: b, lambda b: True, 0.0, 10.0, 30) == 10.0  # the top fits: nothing bisected
    assert bisect_largest(attempt, lambda b: b <= 1.0, 0.0, 10.0, 30) is None  # what can be made never fits
    # ``better`` keeps the best fitting result, not the last: values fall as the budget rises past 5
    best = bisect_largest(lambda b: (b, -abs(b - 5)), lambda r: r[0] <= 8, 0.0, 10.0, 20,
                          better=lambda new, old: new[1] > old[1])
    assert best[0] == pytest.approx(5.0)
    assert thin_evenly(list(range(10)), 4) == [0, 3, 6, 9] and thin_evenly([1, 2], 4) == [1, 2]


class _ContextLatency(MacsLatency):
    """MACs latency plus a cost that depends on the next layer's alignment."""

    def predict(self, signatures):
        return super().predict(signatures) + np.array([0.001 * (1 + s.next_align) for s in signatures])


@pytest.mark.parametrize("spec, shape", [("cifar:resnet20", (1, 3, 32, 32)),
                                         ("torchvision:mobilenet_v2", (1, 3, 64, 64))])
def test_the_planner_costs_the_dense_network_with_its_own_signatures(spec, shape):
    """A layer's cost depends on the next layer's alignment; the planner, whose layer costs may depend only on
    their own widths, must still cost the dense network exactly as the network runs (last layer: 0)."""
    loaded = load_model(spec, input_shape=shape)
    perf = _ContextLatency()
    inputs = prepare(loaded, "l2", policy=WidthPolicy(step=16, max_count=3), perf=perf, backend="fake")
    expected = network_signatures(loaded.model, shape, "fake")
    dense = inputs.latency_problem().cost_of_widths([g.width for g in inputs.groups])
    assert dense == pytest.approx(0.2 + perf.predict(expected).sum(), rel=1e-9)
    assert expected[-1].next_align == 0 and {s.next_align for s in expected[:-1]} <= {1, 2, 4, 8, 16}
    assert len({s.next_align for s in expected}) >= 3  # the test would not see a wrong context otherwise


def test_the_planner_sees_a_misaligned_width_the_next_layer_gets_from_this_one():
    """ResNet-20 with its first stage's hub at 13 channels: the layer after each ``hub -> inner`` layer is
    ``inner -> hub``, so the planner knows it is misaligned although the layer's own output is not, and the
    plan costs what the pruned network's own signatures cost. (Not so in a downsampling block, where the next
    layer writes another hub: there the dense width stands in.)"""
    from latprune.surgery import prune_channels

    loaded = load_model("cifar:resnet20")
    perf = _ContextLatency()
    inputs = prepare(loaded, "l2", policy=WidthPolicy(step=16, max_count=3), perf=perf, backend="fake")
    analysis = analyse(loaded)
    widths = {g.id: 13 if g.id == "conv1" else g.width for g in analysis.groups}
    hub = next(g for g in analysis.groups if g.id == "conv1")
    pruned = prune_channels(loaded.model, loaded.example_input(), analysis.groups,
                            {"conv1": hub.leading_channels(13)}, branches=analysis.branches)
    expected = network_signatures(pruned, loaded.input_shape, "fake")
    assert [s.next_align for s in expected if s.cin == 13 and s.cout == 16] == [1, 1, 1]
    planned = inputs.latency_problem().cost_of_widths([widths[g.id] for g in inputs.groups])
    assert planned == pytest.approx(0.2 + perf.predict(expected).sum(), rel=1e-9)
