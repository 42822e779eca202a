"""Numba kernels of the budgeted dynamic program.

A DP *state array* has one entry per cost bin (0..capacity): the best importance of a
partial plan costing exactly that many bins, or -inf where no partial plan does or where
the entry is *dominated* (a cheaper entry has at least the same importance; no completion
can prefer it). Items are given as Pareto frontiers: (cost bins, importance) points.
Kernels visit only live entries, so pruned and dominated states cost nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEG = -np.inf


@njit(cache=True)
def exact_frontiers(costs, values, out_cost, out_value, out_index, out_count):
    """Per row, the Pareto frontier of (cost, value) points: sorted by cost, value strictly increasing.

    ``costs``/``values``: (rows, points). A point off this frontier is dominated at any
    binning too (rounding up is monotone), so solves only ever scan these points.
    """
    rows, points = costs.shape
    for r in range(rows):
        order = np.argsort(costs[r], kind="mergesort")
        n = 0
        for j in range(points):
            p = order[j]
            c, v = costs[r, p], values[r, p]
            if n > 0 and out_cost[r, n - 1] == c:
                if v > out_value[r, n - 1]:
                    out_value[r, n - 1] = v
                    out_index[r, n - 1] = p
            elif n == 0 or v > out_value[r, n - 1]:
                out_cost[r, n] = c
                out_value[r, n] = v
                out_index[r, n] = p
                n += 1
        out_count[r] = n


@njit(cache=True)
def binned_frontiers(costs, values, index, counts, bin_cost, capacity, out_cost, out_value, out_index, out_count):
    """Round exact frontiers' costs up to bins; keep the best point per bin, drop those over ``capacity``."""
    rows = costs.shape[0]
    for r in range(rows):
        n = 0
        for j in range(counts[r]):
            q = np.ceil(costs[r, j] / bin_cost - 1e-9)
            if q > capacity:  # also an infinite cost (a forbidden combination)
                break
            b = np.int64(q)
            if b < 0:
                b = 0
            if n > 0 and out_cost[r, n - 1] == b:  # same bin, later point: more value
                out_value[r, n - 1] = values[r, j]
                out_index[r, n - 1] = index[r, j]
            else:
                out_cost[r, n] = b
                out_value[r, n] = values[r, j]
                out_index[r, n] = index[r, j]
                n += 1
        out_count[r] = n


@njit(cache=True)
def _prune_dominated(dst):
    best = NEG
    for b in range(dst.shape[0]):
        if dst[b] <= best:
            dst[b] = NEG
        else:
            best = dst[b]


@njit(cache=True)
def fold(src, cost, value, count, dst, choice):
    """dst[b] = max_k src[b - cost[k]] + value[k] over one frontier; ``choice`` records k.

    Returns the number of live source states visited.
    """
    capacity = src.shape[0] - 1
    dst[:] = NEG
    live = 0
    for b in range(capacity + 1):
        base = src[b]
        if base == NEG:
            continue
        live += 1
        for k in range(count):
            t = b + cost[k]
            if t > capacity:
                break
            v = base + value[k]
            if v > dst[t]:
                dst[t] = v
                choice[t] = k
    _prune_dominated(dst)
    return live


@njit(cache=True)
def transition(prev, cost, value, count, dst, choice_prev, choice_point):
    """Cross from hub states ``prev[w']`` to ``dst[w]`` through pair items ``(w', w)``.

    ``cost``/``value``: (W', W, F) frontiers with ``count`` (W', W). Returns live states visited.
    """
    n_prev, n_next = count.shape
    capacity = prev.shape[1] - 1
    dst[:, :] = NEG
    live = 0
    for w in range(n_next):
        for wp in range(n_prev):
            n = count[wp, w]
            for b in range(capacity + 1):
                base = prev[wp, b]
                if base == NEG:
                    continue
                live += 1
                for k in range(n):
                    t = b + cost[wp, w, k]
                    if t > capacity:
                        break
                    v = base + value[wp, w, k]
                    if v > dst[w, t]:
                        dst[w, t] = v
                        choice_prev[w, t] = wp
                        choice_point[w, t] = k
        _prune_dominated(dst[w])
    return live


@njit(cache=True)
def prune_by_bound(states, rest_bound, slope, floor):
    """Drop states that cannot reach ``floor`` even with an upper bound on the rest of the plan.

    With ``capacity - b`` bins left and hub width w, the rest adds at most
    ``rest_bound[w] + slope * (capacity - b)`` (Lagrangian weak duality). Returns the states kept.
    """
    capacity = states.shape[1] - 1
    kept = 0
    for w in range(states.shape[0]):
        for b in range(capacity + 1):
            v = states[w, b]
            if v == NEG:
                continue
            if v + rest_bound[w] + slope * (capacity - b) < floor:
                states[w, b] = NEG
            else:
                kept += 1
    return kept
