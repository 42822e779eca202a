"""Plan a pruned network: the latency DP, and the baselines it is compared with.

``prepare`` gathers what every planner needs once (groups, channel scores, candidate
widths, latency and MACs problems); each planner then returns a :class:`Plan`:

- ``latency_plan``: the exact DP on predicted latency (the product);
- ``flops_plan``: the same DP on MACs, its MACs budget bisected until the predicted latency fits;
- ``uniform_plan``: one keep ratio for every group, rounded to the alignment step;
- ``tp_global_plan``: Torch-Pruning's global magnitude ranking, its ratio bisected to fit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from latprune.errors import LatpruneError
from latprune.analysis import ModelAnalysis, as_analysis
from latprune.budget import Budget, BudgetRequest
from latprune.groups import ChannelGroup
from latprune.models import LoadedModel
from latprune.perfmodel.estimator import NetworkLatencyModel
from latprune.planner.costs import latency_problem, macs_problem
from latprune.planner.importance import channel_importance
from latprune.planner.plan import GroupPlan, Plan
from latprune.planner.problem import PlanningProblem
from latprune.planner.search_steps import bisect_largest
from latprune.planner.solver import Infeasible, Solution, check_reachable, solve
from latprune.planner.widths import WidthPolicy, kept_channels, kept_value, uniform_width

BISECTION_STEPS = 24


@dataclass
class PlanningInputs:
    analysis: ModelAnalysis
    groups: tuple[ChannelGroup, ...]
    scores: dict[str, np.ndarray]
    importance: str
    policy: WidthPolicy
    macs: PlanningProblem
    latency: PlanningProblem | None
    backend: str
    device: str

    @property
    def full_widths(self) -> list[int]:
        return [g.width for g in self.groups]

    def dense_ms(self) -> float:
        return self.latency_problem().cost_of_widths(self.full_widths)

    def removed_at(self, widths: Sequence[int]) -> list[str]:
        """The residual branches these widths (in group order) remove."""
        return removed_branches(self.analysis, {g.id: int(w) for g, w in zip(self.groups, widths)})

    def kept_at(self, widths: Sequence[int]) -> dict[str, list[int]]:
        """The best-scoring channels of each group at these widths (in group order)."""
        return {g.id: kept_channels(g, self.scores[g.id], w) for g, w in zip(self.groups, widths)}

    def latency_problem(self) -> PlanningProblem:
        if self.latency is None:
            raise LatpruneError("latency planning needs a fitted performance model (--backend)")
        return self.latency

    def resolve(self, request: BudgetRequest, refuse_met: bool = True) -> Budget:
        """A budget request in milliseconds: a speedup divides the *predicted* dense latency.

        A budget the dense model already meets as predicted is refused (``refuse_met``): there would be nothing
        to prune. A closed loop judges a budget in milliseconds against the dense model as measured instead."""
        dense = self.dense_ms()
        budget = request.resolve(dense, "predicted dense")
        if refuse_met and budget.target_ms >= dense:
            raise LatpruneError(f"the dense model already meets a budget of {budget.target_ms:.4g} ms (predicted "
                                f"{dense:.4g} ms): nothing to prune")
        return budget


def prepare(model: LoadedModel | ModelAnalysis, importance: str = "l2", calib: torch.Tensor | None = None,
            policy: WidthPolicy | None = None, perf: NetworkLatencyModel | None = None, backend: str = "",
            device: str = "") -> PlanningInputs:
    """Channel scores, candidate widths and cost problems of a model (latency only with ``perf``)."""
    analysis = as_analysis(model)
    policy = policy or WidthPolicy()
    groups = analysis.groups
    if not groups:
        raise LatpruneError(f"{analysis.spec} has no prunable channel groups")
    scores = channel_importance(importance, analysis.model, groups, analysis.layout, calib)
    candidates = [policy.candidates(g) for g in groups]
    values = [kept_value(g, scores[g.id], c) for g, c in zip(groups, candidates)]
    batch = analysis.input_shape[0]
    macs = macs_problem(analysis.layers, batch, groups, candidates, values, analysis.branches, analysis.branch_layers)
    latency = None
    if perf is not None:
        latency = latency_problem(analysis.layers, batch, groups, candidates, values, perf.cost_terms(analysis.key),
                                  backend, analysis.branches, analysis.branch_layers)
    return PlanningInputs(analysis, groups, scores, importance, policy, macs, latency, backend, device)


def with_perf(inputs: PlanningInputs, perf: NetworkLatencyModel) -> PlanningInputs:
    """The same inputs with the latency problem rebuilt on another performance model (scores are kept)."""
    analysis, macs = inputs.analysis, inputs.macs
    latency = latency_problem(analysis.layers, analysis.input_shape[0], inputs.groups, macs.candidates, macs.values,
                              perf.cost_terms(analysis.key), inputs.backend, analysis.branches, analysis.branch_layers)
    return dataclasses.replace(inputs, latency=latency)


def build_plan(inputs: PlanningInputs, widths: list[int], method: str, budget: Budget | None,
               solver: dict | None = None, kept: dict[str, list[int]] | None = None, cost: str = "latency") -> Plan:
    """A plan for explicit widths; kept channels are the best-scoring unless given."""
    kept = kept or inputs.kept_at(widths)
    total = sum(float(inputs.scores[g.id].sum()) for g in inputs.groups)
    retained = sum(float(inputs.scores[g.id][kept[g.id]].sum()) for g in inputs.groups)
    predicted = dense = None
    if inputs.latency is not None:
        predicted, dense = inputs.latency.cost_of_widths(widths), inputs.dense_ms()
    return Plan(
        model=inputs.analysis.spec, input_shape=list(inputs.analysis.input_shape), backend=inputs.backend, cost=cost,
        method=method, importance=inputs.importance, budget_ms=budget.target_ms if budget else None,
        predicted_ms=predicted,
        dense_predicted_ms=dense, importance_kept=retained / max(total, 1e-12),
        macs=int(round(inputs.macs.cost_of_widths(widths) * 1e6)),
        dense_macs=int(round(inputs.macs.cost_of_widths(inputs.full_widths) * 1e6)),
        groups=[GroupPlan(g.id, int(w), g.width, sorted(int(i) for i in kept[g.id]))
                for g, w in zip(inputs.groups, widths)],
        solver=dict(solver or {}), device=inputs.device, budget=budget.to_json() if budget else {},
        removed=inputs.removed_at(widths),
        preprocessing=inputs.analysis.loaded.preprocessing,
    )


def removed_branches(analysis: ModelAnalysis, widths: dict[str, int]) -> list[str]:
    """The residual branches that these widths remove (every inner group at 0)."""
    return [b.id for b in analysis.branches if all(widths.get(gid, -1) == 0 for gid in b.groups)]


def latency_plan(inputs: PlanningInputs, budget: Budget, bins: int = 2000, max_macs: float | None = None) -> Plan:
    """The most important plan whose predicted latency meets the budget (and MACs cap, if any).

    The plan aims at ``budget.target_ms``. A MACs cap is met by bisecting the latency budget
    down until the plan fits it, so with a cap the plan is optimal for the latency it ends at,
    not jointly.
    """
    problem = inputs.latency_problem()
    target = budget.target_ms
    solution = solve(problem, target, bins)
    if max_macs is not None and inputs.macs.total_cost(solution.choice) * 1e6 > max_macs:
        solution = _largest_fitting(
            lambda b: solve(problem, b, bins),
            lambda s: inputs.macs.total_cost(s.choice) * 1e6 <= max_macs,
            low=problem.total_cost(problem.fastest()), high=target, what=f"{max_macs:.4g} MACs")
    return build_plan(inputs, problem.widths(solution.choice), "latency-dp", budget, _stats(solution, bins))


def flops_plan(inputs: PlanningInputs, budget: Budget, bins: int = 2000) -> Plan:
    """The FLOPs baseline: the same DP with MACs as the cost, at the largest MACs budget whose
    plan's *predicted latency* meets the latency budget."""
    problem = inputs.latency_problem()
    target = budget.target_ms
    check_reachable(problem, target)
    macs = inputs.macs
    solution = _largest_fitting(lambda m: solve(macs, m, bins), lambda s: problem.total_cost(s.choice) <= target,
                                low=macs.total_cost(macs.fastest()), high=macs.total_cost(macs.full()),
                                what=f"{target:.4g} ms")
    return build_plan(inputs, macs.widths(solution.choice), "flops-dp", budget, _stats(solution, bins))


def _uniform_widths(inputs: PlanningInputs, ratio: float) -> list[int]:
    hold = inputs.policy.hold
    return [g.width if g.id in hold else uniform_width(g, ratio, inputs.policy.unit(g)) for g in inputs.groups]


def uniform_plan(inputs: PlanningInputs, ratio: float) -> Plan:
    """Keep ``ratio`` of every group, rounded to the alignment step."""
    if not 0 < ratio <= 1:
        raise LatpruneError(f"--uniform takes a keep ratio in (0, 1], got {ratio}")
    return build_plan(inputs, _uniform_widths(inputs, ratio), "uniform", None, {"ratio": ratio})


def uniform_plan_for_budget(inputs: PlanningInputs, budget: Budget) -> Plan:
    """The largest uniform ratio whose predicted latency meets the budget."""
    target = budget.target_ms
    problem = inputs.latency_problem()
    ratio = _largest_ratio(lambda r: problem.cost_of_widths(_uniform_widths(inputs, r)) <= target,
                           what=f"{target:.4g} ms")
    return build_plan(inputs, _uniform_widths(inputs, ratio), "uniform", budget, {"ratio": ratio})


def tp_global_plan(inputs: PlanningInputs, budget: Budget) -> Plan:
    """Torch-Pruning global magnitude pruning: one threshold on TP's group-L2 scores over all groups,
    the pruned fraction bisected until the predicted latency meets the budget. Widths are not aligned."""
    target = budget.target_ms
    problem = inputs.latency_problem()
    raw = inputs.analysis.magnitude_scores()
    scores = {g.id: raw[g.id].numpy().astype(float) for g in inputs.groups}
    everything = np.concatenate(list(scores.values()))

    def kept_at(ratio: float) -> dict[str, list[int]]:
        threshold = np.quantile(everything, 1 - ratio)
        kept = {}
        for g in inputs.groups:
            per_slice = g.width // g.divisor
            offsets = scores[g.id].reshape(g.divisor, -1).mean(0)
            count = min(per_slice, max(1, int((offsets >= threshold).sum())))
            count = per_slice if g.id in inputs.policy.hold else count
            kept[g.id] = kept_channels(g, scores[g.id], count * g.divisor)
        return kept

    def fits(ratio: float) -> bool:
        return problem.cost_of_widths([len(v) for v in kept_at(ratio).values()]) <= target

    ratio = _largest_ratio(fits, what=f"{target:.4g} ms")
    kept = kept_at(ratio)
    return build_plan(inputs, [len(kept[g.id]) for g in inputs.groups], "tp-global-magnitude", budget,
                      {"kept_ratio": ratio, "importance": "torch-pruning GroupMagnitudeImportance(p=2)"}, kept=kept)


def _largest_fitting(solve_at: Callable[[float], Solution], fits: Callable[[Solution], bool], low: float,
                     high: float, what: str) -> Solution:
    """Bisect a solver budget in [low, high] for the largest whose solution ``fits`` (the most important kept)."""

    def attempt(budget: float) -> Solution | None:
        try:
            return solve_at(budget)
        except Infeasible:
            return None

    best = bisect_largest(attempt, fits, low, high, BISECTION_STEPS, better=lambda new, old: new.value > old.value)
    if best is None:
        raise LatpruneError(f"no plan meets {what}")
    return best


def _largest_ratio(fits: Callable[[float], bool], what: str) -> float:
    ratio = bisect_largest(lambda r: r, fits, 0.0, 1.0, BISECTION_STEPS)
    if not ratio:
        raise LatpruneError(f"no keep ratio meets {what}")
    return ratio


def _stats(solution: Solution, bins: int) -> dict:
    return {"bins": bins, **solution.stats, "importance_value": solution.value,
            "solved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
