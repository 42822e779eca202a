"""Cost tables over candidate widths, and the hub-chain decomposition the exact DP needs.

Layer costs become unary tables (a layer whose widths one group sets) and pairwise tables
(input set by one group, output by another). The groups' interaction graph is then split
into *hubs* (groups coupled to many others, such as a ResNet stage's residual channels)
ordered along a path, and small *items* hanging off one hub or between two consecutive
hubs (a residual block's inner channels). Given the hub widths, items are independent,
so each becomes a Pareto frontier; the DP runs along the hub path.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from latprune.planner.problem import PlanningProblem

# Largest item enumerated explicitly (hub and internal widths combined).
ENUMERATION_LIMIT = 1 << 22


class NotDecomposable(Exception):
    """The problem's structure is outside what the exact DP handles; the reason says why."""


@dataclass
class Tables:
    """Costs over candidate indices: ``unary[g]`` (n_g,), ``pairwise[(g, h)]`` (n_g, n_h) with g < h."""

    unary: dict[int, np.ndarray]
    pairwise: dict[tuple[int, int], np.ndarray]
    constant: float


def tabulate(problem: PlanningProblem, frozen: list[int] | None = None) -> Tables:
    """Cost tables of every layer; with ``frozen`` widths per group, input widths are held there.

    Raises :class:`NotDecomposable` for a layer whose input width several groups set
    (concatenations) unless input widths are frozen.
    """
    unary: dict[int, np.ndarray] = defaultdict(lambda: 0.0)
    pairwise: dict[tuple[int, int], np.ndarray] = defaultdict(lambda: 0.0)
    constant = problem.constant
    for index, term in enumerate(problem.layers):
        if term.gate is not None:
            _add_gated(problem, index, term, frozen, unary, pairwise)
            continue
        if frozen is not None:
            cin_fixed = term.in_fixed + sum(frozen[g] for g in term.in_groups)
            in_groups: tuple[int, ...] = ()
        else:
            if len(term.in_groups) > 1:
                raise NotDecomposable(f"layer {term.name} reads the concatenation of {len(term.in_groups)} groups")
            cin_fixed, in_groups = term.in_fixed, term.in_groups
        if term.depthwise and term.out_group is not None:
            g = term.out_group
            rows = [(index, int(w), int(w)) for w in problem.candidates[g]]
            unary[g] = unary[g] + problem.costs(rows)
            continue
        axes = [g for g in (*in_groups, term.out_group) if g is not None]
        if not axes:
            constant += float(problem.costs([(index, cin_fixed, term.out_fixed)])[0])
            continue
        grid = list(itertools.product(*(problem.candidates[g] for g in axes)))
        rows = []
        for widths in grid:
            cin = cin_fixed + (int(widths[0]) if in_groups else 0)
            cout = term.out_fixed + (int(widths[-1]) if term.out_group is not None else 0)
            rows.append((index, cin, cout))
        table = problem.costs(rows).reshape([len(problem.candidates[g]) for g in axes])
        if len(axes) == 1:
            unary[axes[0]] = unary[axes[0]] + table
        elif axes[0] == axes[1]:
            unary[axes[0]] = unary[axes[0]] + np.diagonal(table)
        else:
            key = (min(axes), max(axes))
            pairwise[key] = pairwise[key] + (table if axes[0] < axes[1] else table.T)
    for members in problem.together:  # all at 0 or none: a half-removed branch is not a network
        for g, h in zip(members, members[1:]):
            zero_g, zero_h = problem.candidates[g] == 0, problem.candidates[h] == 0
            forbidden = np.where(zero_g[:, None] != zero_h[None, :], np.inf, 0.0)
            key = (min(g, h), max(g, h))
            pairwise[key] = pairwise[key] + (forbidden if g < h else forbidden.T)
    return Tables(dict(unary), dict(pairwise), constant)


def _add_gated(problem: PlanningProblem, index: int, term, frozen: list[int] | None, unary: dict,
               pairwise: dict) -> None:
    """A layer present only while its gate group is at width 0 (a removed branch's bias layer): its cost over
    the hub group's widths (or fixed) times whether the gate is at 0."""
    gate = term.gate
    present = (problem.candidates[gate] == 0).astype(float)
    hub = term.out_group
    if hub is None or frozen is not None:
        width = term.out_fixed + (frozen[hub] if hub is not None else 0)
        cin = term.in_fixed + (frozen[hub] if hub is not None and term.in_groups else 0)
        cost = float(problem.costs([(index, cin, width)])[0])
        unary[gate] = unary[gate] + cost * present
        return
    costs = problem.costs([(index, int(w), int(w)) for w in problem.candidates[hub]])
    table = costs[:, None] * present[None, :]
    key = (min(hub, gate), max(hub, gate))
    pairwise[key] = pairwise[key] + (table if hub < gate else table.T)


@dataclass
class Item:
    """Part of the cost/value attached to one hub (``hubs`` = (i,)) or two (i - 1, i).

    ``cost`` and ``value`` are arrays over axes ``hubs`` then ``internal`` (group indices
    whose widths the item decides once its hubs are fixed).
    """

    hubs: tuple[int, ...]
    internal: tuple[int, ...]
    cost: np.ndarray
    value: np.ndarray


@dataclass
class HubChain:
    """Hub groups in path order (-1: a placeholder hub of one width) and the items along it."""

    hubs: list[int]
    items: list[Item]
    promoted: int  # groups made hubs because their component was too large to enumerate


def decompose(problem: PlanningProblem, tables: Tables) -> HubChain:
    """Split the interaction graph into a hub path and enumerable items, or raise NotDecomposable."""
    n = problem.size
    sizes = [len(c) for c in problem.candidates]
    neighbours: dict[int, set[int]] = defaultdict(set)
    for g, h in tables.pairwise:
        neighbours[g].add(h)
        neighbours[h].add(g)
    hubs = {g for g in range(n) if len(neighbours[g]) >= 3}
    promoted = 0
    while True:
        components = _components([g for g in range(n) if g not in hubs], neighbours)
        too_big = []
        for comp in components:
            attached = sorted({h for g in comp for h in neighbours[g] if h in hubs})
            volume = np.prod([sizes[g] for g in comp + attached], dtype=float)
            if len(attached) > 2 or volume > ENUMERATION_LIMIT:
                too_big.append(comp)
        if not too_big:
            break
        for comp in too_big:
            if len(comp) == 1 and len({h for h in neighbours[comp[0]] if h in hubs}) > 2:
                raise NotDecomposable(f"group {problem.group_ids[comp[0]]} couples more than two hub groups")
            hubs.update(comp)
            promoted += len(comp)

    order = _hub_path(hubs, components, neighbours, problem)
    position = {g: i for i, g in enumerate(order)}
    if not order:
        order = [-1]
    items: list[Item] = []
    by_pair: dict[tuple[int, ...], list[list[int]]] = defaultdict(list)
    for comp in components:
        attached = tuple(sorted({position[h] for g in comp for h in neighbours[g] if h in hubs}))
        if len(attached) == 2 and attached[1] - attached[0] != 1:
            raise NotDecomposable("a component joins hubs that are not neighbours on the hub path")
        by_pair[attached or (0,)].append(comp)
    for i, hub in enumerate(order):  # DP order: cross from hub i - 1 to hub i, then fold hub i's items
        if i > 0:
            members = [g for comp in by_pair.get((i - 1, i), []) for g in comp]
            items.append(_item(problem, tables, (i - 1, i), order, own_hubs=[], internal=members, pair=True))
        own = [] if hub < 0 else [hub]
        items.append(_item(problem, tables, (i,), order, own_hubs=own, internal=[]))
        for comp in by_pair.get((i,), []):
            items.append(_item(problem, tables, (i,), order, own_hubs=[], internal=comp))
    return HubChain(hubs=order, items=items, promoted=promoted)


def _components(nodes: list[int], neighbours: dict[int, set[int]]) -> list[list[int]]:
    remaining, found = set(nodes), []
    for start in nodes:
        if start not in remaining:
            continue
        stack, comp = [start], []
        remaining.discard(start)
        while stack:
            g = stack.pop()
            comp.append(g)
            for h in neighbours[g]:
                if h in remaining:
                    remaining.discard(h)
                    stack.append(h)
        found.append(sorted(comp))
    return found


def _hub_path(hubs: set[int], components: list[list[int]], neighbours: dict[int, set[int]],
              problem: PlanningProblem) -> list[int]:
    """Hubs ordered so that every hub-hub coupling (direct or through a component) is consecutive."""
    links: dict[int, set[int]] = defaultdict(set)
    for g in hubs:
        for h in neighbours[g]:
            if h in hubs:
                links[g].add(h)
    for comp in components:
        attached = sorted({h for g in comp for h in neighbours[g] if h in hubs})
        if len(attached) == 2:
            links[attached[0]].add(attached[1])
            links[attached[1]].add(attached[0])
    bad = [g for g in hubs if len(links[g]) > 2]
    if bad:
        raise NotDecomposable(f"hub group {problem.group_ids[bad[0]]} is coupled to {len(links[bad[0]])} other hubs")
    order: list[int] = []
    seen: set[int] = set()
    for start in sorted(hubs, key=lambda g: (len(links[g]) != 1 and len(links[g]) != 0, g)):
        if start in seen:
            continue
        if len(links[start]) == 2:
            raise NotDecomposable("hub groups form a cycle")
        current, previous = start, None
        while current is not None:
            order.append(current)
            seen.add(current)
            nxt = [h for h in links[current] if h != previous and h not in seen]
            previous, current = current, (nxt[0] if nxt else None)
    if len(order) != len(hubs):
        raise NotDecomposable("hub groups form a cycle")
    return order


def _item(problem: PlanningProblem, tables: Tables, hub_positions: tuple[int, ...], order: list[int],
          own_hubs: list[int], internal: list[int], pair: bool = False) -> Item:
    """Sum the tables and values that belong to an item: its own groups' unary costs and values,
    couplings of its groups with each other and with its hubs, and (for a pair item) the
    direct coupling of its two hubs."""
    hub_groups = [order[i] for i in hub_positions]
    axes = hub_groups + list(internal)
    where = {g: a for a, g in enumerate(axes) if g >= 0}
    shape = [len(problem.candidates[g]) if g >= 0 else 1 for g in axes]
    cost, value = np.zeros(shape), np.zeros(shape)
    inside = set(internal) | set(own_hubs)
    for g in inside:
        if g in tables.unary:
            cost = cost + _place(tables.unary[g][:, None], (g,), where, shape)
        value = value + _place(problem.values[g][:, None], (g,), where, shape)
    for (g, h), table in tables.pairwise.items():
        if g in where and h in where and (g in inside or h in inside or pair):
            cost = cost + _place(table, (g, h), where, shape)
    return Item(hubs=hub_positions, internal=tuple(internal), cost=cost, value=value)


def _place(table: np.ndarray, groups: tuple[int, ...], where: dict[int, int], shape: list[int]) -> np.ndarray:
    """Reshape a table over ``groups`` (a unary table given as a column) to broadcast over an item's axes."""
    if len(groups) == 1:
        table = table[:, 0]
    elif where[groups[0]] > where[groups[1]]:
        table = table.T
    target = [1] * len(shape)
    for g in groups:
        target[where[g]] = shape[where[g]]
    return table.reshape(target)
