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
from latprune.planner.search_steps import bisect_largest
from latprune.planner.structure import HubChain, Item, NotDecomposable, decompose, tabulate

FALLBACK_ITERATIONS = 10
COARSENING = 5  # each bounding pass has 1/5 of the bins of the next
MIN_PASS_BINS = 40
BISECTION_STEPS = 12


@dataclass
class Solution:
    choice: list[int]  # candidate index per group
    cost: float  # exact cost of the plan
    value: float
    stats: dict = field(default_factory=dict)


class Infeasible(LatpruneError):
    """No plan meets the budget."""


def check_reachable(problem: PlanningProblem, budget: float) -> None:
    """Raise :class:`Infeasible` when even the narrowest plan costs more than ``budget``."""
    fastest = problem.total_cost(problem.fastest())
    if budget < fastest:
        raise Infeasible(f"budget {budget:.4g} {problem.unit} is below the fastest achievable plan ({fastest:.4g} "
                         f"{problem.unit}, every group at its narrowest candidate width)")


def solve(problem: PlanningProblem, budget: float, bins: int = 2000) -> Solution:
    """The most important plan whose cost is at most ``budget`` (exact up to cost rounding).

    Uses the exact hub-chain DP where the structure allows; otherwise the frozen-input
    fallback, recorded in ``stats["method"]``. The decomposition and each item's exact
    Pareto frontier depend only on the problem, so they are built once and reused.
    """
    check_reachable(problem, budget)
    started = time.perf_counter()
    prepared = problem.solver_cache
    if prepared is None:
        try:
            tables = tabulate(problem)
            chain = decompose(problem, tables)
            prepared = (chain, tables.constant, [_exact_frontier(item) for item in chain.items])
        except NotDecomposable as exc:
            prepared = str(exc)
        problem.solver_cache = prepared
    if isinstance(prepared, str):
        solution = _solve_frozen(problem, budget, bins, reason=prepared)
    else:
        chain, constant, exact = prepared
        solution = _solve_chain(problem, chain, constant, budget, bins, exact)
        solution.stats.update(method="exact hub-chain DP", hubs=len([h for h in chain.hubs if h >= 0]),
                              items=len(chain.items), promoted_hubs=chain.promoted)
    solution.stats["solve_s"] = time.perf_counter() - started
    return solution


def _exact_frontier(item: Item):
    """Per hub-width combination, the item's exact (cost above its minimum, value) Pareto frontier."""
    hub_shape = item.cost.shape[:len(item.hubs)]
    full_shape = np.broadcast_shapes(item.cost.shape, item.value.shape)
    cost = np.broadcast_to(item.cost - item.cost.min(), full_shape).reshape(int(np.prod(hub_shape)), -1)
    value = np.broadcast_to(item.value, full_shape).reshape(cost.shape)
    rows, points = cost.shape
    out_cost, out_value = np.zeros((rows, points)), np.zeros((rows, points))
    out_index, out_count = np.zeros((rows, points), dtype=np.int64), np.zeros(rows, dtype=np.int64)
    kernels.exact_frontiers(np.ascontiguousarray(cost), np.ascontiguousarray(value), out_cost, out_value,
                            out_index, out_count)
    width = max(int(out_count.max()), 1)
    return (float(item.cost.min()), np.ascontiguousarray(out_cost[:, :width]),
            np.ascontiguousarray(out_value[:, :width]), np.ascontiguousarray(out_index[:, :width]), out_count,
            hub_shape)


def _binned(exact, bin_cost: float, capacity: int):
    """An exact frontier with costs rounded up to bins, shaped (hubs..., points)."""
    _, cost, value, index, count, hub_shape = exact
    rows, width = cost.shape
    out_cost, out_value = np.empty((rows, width), dtype=np.int64), np.empty((rows, width))
    out_index, out_count = np.empty((rows, width), dtype=np.int64), np.empty(rows, dtype=np.int64)
    kernels.binned_frontiers(cost, value, index, count, bin_cost, capacity, out_cost, out_value, out_index,
                             out_count)
    shape = (*hub_shape, width)
    return (out_cost.reshape(shape), out_value.reshape(shape), out_index.reshape(shape), out_count.reshape(hub_shape))


def _solve_chain(problem: PlanningProblem, chain: HubChain, constant: float, budget: float, bins: int,
                 exact: list) -> Solution:
    """Run the DP on a decomposed problem with its items' exact frontiers (see :func:`_pass` for pruning)."""
    t0 = time.perf_counter()
    base = constant + sum(e[0] for e in exact)
    slack = budget - base
    if slack < 0:
        raise Infeasible(f"budget {budget:.4g} is below the cheapest plan's cost ({base:.4g})")
    bin_cost = max(slack, 1e-12) / bins
    hub_sizes = [len(problem.candidates[h]) if h >= 0 else 1 for h in chain.hubs]
    stats: dict = {"bins": bins, "bin_cost": bin_cost, "passes": []}
    states, trail, fronts = _pass(chain, exact, hub_sizes, bins, bin_cost, stats)
    if states is None:
        raise Infeasible(f"no plan fits the budget {budget:.4g} at {bins} cost bins; raise the budget or --bins")
    choice = _backtrack(problem, chain, fronts, trail, states)
    final = stats["passes"][-1]
    stats.update(live_states=final["live_states"], dp_s=final["dp_s"], bound_s=time.perf_counter() - t0
                 - final["dp_s"], frontier_points=int(sum(f[3].sum() for f in fronts)))
    return Solution(choice=choice, cost=problem.total_cost(choice), value=problem.total_value(choice), stats=stats)


def _pass(chain: HubChain, exact: list, hub_sizes: list[int], bins: int, bin_cost: float, stats: dict):
    """One DP pass at ``bins`` bins, pruned with a bound from a coarser pass when ``bins`` is large.

    A pass at 1/COARSENING of the resolution (recursively) gives a feasible plan (its
    rounded-up costs fit the finer bins too) whose value is a lower bound, and the slope of
    its value-vs-cost curve a Lagrange multiplier. This pass then drops every state that even
    the Lagrangian upper bound on the rest of the plan cannot lift to that lower bound. Such
    states cannot lead to the optimum, so the result stays exact.
    """
    bound = None
    if bins >= COARSENING * MIN_PASS_BINS:
        coarse_bins = bins // COARSENING
        factor = bins / coarse_bins
        coarse_states, _, _ = _pass(chain, exact, hub_sizes, coarse_bins, bin_cost * factor, stats)
        if coarse_states is not None:
            floor = float(coarse_states.max())
            best_by_cost = np.maximum.accumulate(coarse_states.max(axis=0))
            low = int(0.8 * coarse_bins)
            slope = max((best_by_cost[-1] - best_by_cost[low]) / max(coarse_bins - low, 1), 0.0) / factor
            bound = (slope, floor - 1e-9 * max(abs(floor), 1.0))
    fronts = [_binned(e, bin_cost, bins) for e in exact]
    started = time.perf_counter()
    if bound is not None:
        bound = (_rest_bounds(chain, fronts, hub_sizes, bound[0]), *bound)
    states, trail, live = _forward(chain, fronts, hub_sizes, bins, bound)
    stats["passes"].append({"bins": bins, "live_states": int(live), "dp_s": time.perf_counter() - started})
    if not np.isfinite(states).any():
        return None, trail, fronts
    return states, trail, fronts


def _forward(chain: HubChain, fronts: list, hub_sizes: list[int], bins: int, bound):
    """Fold every item into the per-hub-width state arrays; returns final states, the trail, live count."""
    states = np.full((hub_sizes[0], bins + 1), kernels.NEG)
    states[:, 0] = 0.0
    trail = []
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
        if bound is not None:
            rest, slope, floor = bound
            kernels.prune_by_bound(nxt, rest[index], slope, floor)
        states = nxt
    return states, trail, live


def _rest_bounds(chain: HubChain, fronts: list, hub_sizes: list[int], slope: float) -> list[np.ndarray]:
    """For each item j, a bound on the Lagrangian value (value - slope * bins) of items after j,
    per width of the hub the DP stands on after item j."""
    rest = np.zeros(hub_sizes[-1])
    bounds: list[np.ndarray] = [None] * len(chain.items)
    for index in range(len(chain.items) - 1, -1, -1):
        bounds[index] = rest
        cost, value, _, count = fronts[index]
        valid = np.arange(cost.shape[-1]) < count[..., None]
        with np.errstate(invalid="ignore"):  # padding beyond ``count`` may hold inf costs; masked out here
            best = np.where(valid, value - slope * cost, -np.inf).max(axis=-1)
        if len(chain.items[index].hubs) == 2:
            rest = (best + rest[None, :]).max(axis=1)
        else:
            rest = rest + best
    return bounds


def _backtrack(problem: PlanningProblem, chain: HubChain, fronts: list, trail: list, states: np.ndarray) -> list[int]:
    w, b = np.unravel_index(int(np.argmax(states)), states.shape)
    choice = [-1] * problem.size
    for index, choice_prev, choice_point in reversed(trail):
        item = chain.items[index]
        cost, _, point_index, _ = fronts[index]
        k = int(choice_point[w, b])
        if choice_prev is not None:
            wp = int(choice_prev[w, b])
            b -= int(cost[wp, w, k])
            _assign(choice, item, int(point_index[wp, w, k]), hubs=(wp, w), chain=chain)
            w = wp
        else:
            b -= int(cost[w, k])
            _assign(choice, item, int(point_index[w, k]), hubs=(w,), chain=chain)
    if any(k < 0 for k in choice):
        raise RuntimeError("backtracking left a group without a width")
    return choice


def _assign(choice: list[int], item: Item, flat_point: int, hubs: tuple[int, ...], chain: HubChain) -> None:
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
        tables = tabulate(problem, frozen=problem.widths(current))
        chain = decompose(problem, tables)
        exact = [_exact_frontier(item) for item in chain.items]

        def attempt(target: float) -> Solution | None:
            nonlocal solves
            solves += 1
            try:
                return _solve_chain(problem, chain, tables.constant, target, bins, exact)
            except Infeasible:  # frozen costs exceed even this target: only a larger one can fit
                return None

        found = bisect_largest(attempt, lambda step: step.cost <= budget, 0.0, budget, BISECTION_STEPS,
                               better=lambda new, old: new.value > old.value)
        if found is None or found.choice == current:
            break
        if found.value > best.value:
            best = found
        current = found.choice
    best.stats.update(method="fallback: frozen input widths, iterated", fallback_reason=reason,
                      rounds=rounds, solves=solves, dp_s=time.perf_counter() - t0)
    return best
