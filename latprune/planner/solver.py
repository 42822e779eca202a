"""Exact budgeted DP over the hub chain, and the frozen-input fallback.

Costs are discretised into ``bins`` bins of the budget left once every item's minimum is
paid; each item point's cost is rounded *up*, so a plan's exact cost never exceeds the
budget. Along the hub path the DP keeps, per hub width, the best importance at each cost
bin (dominated states dropped); items between two hubs are crossed with a max over the
previous hub's width, items on one hub are folded in. Backtracking recovers the widths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from latprune.errors import LatpruneError
from latprune.planner import kernels
from latprune.planner.problem import PlanningProblem
from latprune.planner.structure import HubChain, NotDecomposable, decompose, tabulate

FALLBACK_ITERATIONS = 10
BISECTION_STEPS = 12


@dataclass
class Solution:
    choice: list[int]  # candidate index per group
    cost: float  # exact cost of the plan
    value: float
    stats: dict = field(default_factory=dict)


class Infeasible(LatpruneError):
    """No plan meets the budget."""


def solve(problem: PlanningProblem, budget: float, bins: int = 2000) -> Solution:
    """The most important plan whose cost is at most ``budget`` (exact up to cost rounding).

    Uses the exact hub-chain DP where the structure allows; otherwise the frozen-input
    fallback, recorded in ``stats["method"]``.
    """
    fastest = problem.total_cost(problem.fastest())
    if budget < fastest:
        raise Infeasible(f"budget {budget:.4g} is below the fastest achievable plan ({fastest:.4g}, every group "
                         f"at its smallest candidate width)")
    started = time.perf_counter()
    try:
        tables = tabulate(problem)
        chain = decompose(problem, tables)
    except NotDecomposable as exc:
        solution = _solve_frozen(problem, budget, bins, reason=str(exc))
    else:
        solution = _solve_chain(problem, chain, tables.constant, budget, bins)
        solution.stats.update(method="exact hub-chain DP", hubs=len([h for h in chain.hubs if h >= 0]),
                              items=len(chain.items), promoted_hubs=chain.promoted,
                              tabulate_s=solution.stats.pop("prepare_s", 0.0))
    solution.stats["total_s"] = time.perf_counter() - started
    return solution


def _solve_chain(problem: PlanningProblem, chain: HubChain, constant: float, budget: float, bins: int) -> Solution:
    """Run the DP on a decomposed problem; ``stats`` separates frontier building from the DP proper."""
    t0 = time.perf_counter()
    base = constant + sum(float(item.cost.min()) for item in chain.items)
    slack = budget - base
    if slack < 0:
        raise Infeasible(f"budget {budget:.4g} is below the cheapest plan's cost ({base:.4g})")
    bin_cost = max(slack, 1e-12) / bins
    fronts = [_frontier(item, bin_cost, bins) for item in chain.items]
    t1 = time.perf_counter()

    hub_sizes = [len(problem.candidates[h]) if h >= 0 else 1 for h in chain.hubs]
    states = np.full((hub_sizes[0], bins + 1), kernels.NEG)
    states[:, 0] = 0.0
    trail = []  # per item: (item index, choice arrays) for backtracking
    live = 0
    for index, (item, front) in enumerate(zip(chain.items, fronts)):
        cost, value, _, count = front
        if len(item.hubs) == 2:
            nxt = np.empty((hub_sizes[item.hubs[1]], bins + 1))
            choice_prev = np.zeros(nxt.shape, dtype=np.int32)
            choice_point = np.zeros(nxt.shape, dtype=np.int32)
            live += kernels.transition(states, cost, value, count, nxt, choice_prev, choice_point)
            trail.append((index, choice_prev, choice_point))
        else:
            nxt = np.empty_like(states)
            choice_point = np.zeros(states.shape, dtype=np.int32)
            for w in range(states.shape[0]):
                live += kernels.fold(states[w], cost[w], value[w], count[w], nxt[w], choice_point[w])
            trail.append((index, None, choice_point))
        states = nxt
    t2 = time.perf_counter()
    if not np.isfinite(states).any():
        raise Infeasible(f"no plan fits the budget {budget:.4g} at {bins} cost bins; raise the budget or --bins")

    w, b = np.unravel_index(int(np.argmax(states)), states.shape)
    choice = [-1] * problem.size
    for index, choice_prev, choice_point in reversed(trail):
        item = chain.items[index]
        cost, value, point_index, _ = fronts[index]
        k = int(choice_point[w, b])
        if choice_prev is not None:
            wp = int(choice_prev[w, b])
            b -= int(cost[wp, w, k])
            picked = int(point_index[wp, w, k])
            _assign(choice, item, picked, hubs=(wp, w), chain=chain)
            w = wp
        else:
            b -= int(cost[w, k])
            _assign(choice, item, int(point_index[w, k]), hubs=(w,), chain=chain)
    if any(k < 0 for k in choice):
        raise RuntimeError("backtracking left a group without a width")
    exact = problem.total_cost(choice)
    return Solution(choice=choice, cost=exact, value=problem.total_value(choice), stats={
        "bins": bins, "bin_cost": bin_cost, "live_states": int(live), "prepare_s": t1 - t0, "dp_s": t2 - t1,
        "frontier_points": int(sum(f[3].sum() for f in fronts)),
    })


def _frontier(item, bin_cost: float, capacity: int):
    """The item's Pareto frontier per hub-width combination, costs in bins above its minimum."""
    hub_shape = item.cost.shape[:len(item.hubs)]
    full_shape = np.broadcast_shapes(item.cost.shape, item.value.shape)
    cost = np.broadcast_to(item.cost - item.cost.min(), full_shape).reshape(int(np.prod(hub_shape)), -1)
    value = np.broadcast_to(item.value, full_shape).reshape(cost.shape)
    rows, points = cost.shape
    out_cost = np.zeros((rows, points), dtype=np.int64)
    out_value = np.zeros((rows, points))
    out_index = np.zeros((rows, points), dtype=np.int64)
    out_count = np.zeros(rows, dtype=np.int64)
    kernels.frontiers(np.ascontiguousarray(cost), np.ascontiguousarray(value), bin_cost, capacity,
                      out_cost, out_value, out_index, out_count)
    width = max(int(out_count.max()), 1)
    shape = (*hub_shape, width)
    return (out_cost[:, :width].reshape(shape), out_value[:, :width].reshape(shape),
            out_index[:, :width].reshape(shape), out_count.reshape(hub_shape))


def _assign(choice: list[int], item, flat_point: int, hubs: tuple[int, ...], chain: HubChain) -> None:
    """Record the widths an item point stands for (its internal groups, and its hubs)."""
    for position, width_index in zip(item.hubs, hubs):
        group = chain.hubs[position]
        if group >= 0:
            choice[group] = width_index
    internal_shape = item.cost.shape[len(item.hubs):]
    if item.internal:
        for group, k in zip(item.internal, np.unravel_index(flat_point, internal_shape)):
            choice[group] = int(k)


def _solve_frozen(problem: PlanningProblem, budget: float, bins: int, reason: str) -> Solution:
    """Fallback: hold every layer's input width at the current plan, solve the separable problem, repeat.

    Frozen costs are wrong wherever the new plan changes an input width, so each round
    bisects the frozen budget for the most important plan whose *exact* cost still fits,
    then re-freezes at that plan, until the plan stops changing. The narrowest plan is the
    starting point and always fits, so a plan is always returned; it is not proven optimal.
    """
    t0 = time.perf_counter()
    current = problem.fastest()
    best = Solution(choice=current, cost=problem.total_cost(current), value=problem.total_value(current))
    rounds = solves = 0
    for rounds in range(1, FALLBACK_ITERATIONS + 1):
        widths = [int(problem.candidates[g][k]) for g, k in enumerate(current)]
        tables = tabulate(problem, frozen=widths)
        chain = decompose(problem, tables)
        found, low, high, target = None, 0.0, budget, budget
        for _ in range(BISECTION_STEPS):
            solves += 1
            try:
                step = _solve_chain(problem, chain, tables.constant, target, bins)
            except Infeasible:  # frozen costs exceed even this target: only a larger one can fit
                low = target
            else:
                if step.cost <= budget:
                    if found is None or step.value > found.value:
                        found = step
                    if target == budget:
                        break
                    low = target
                else:
                    high = target
            if low >= budget:
                break
            target = (low + high) / 2
        if found is None or found.choice == current:
            break
        if found.value > best.value:
            best = found
        current = found.choice
    best.stats.update(method="fallback: frozen input widths, iterated", fallback_reason=reason,
                      rounds=rounds, solves=solves, dp_s=time.perf_counter() - t0)
    return best
