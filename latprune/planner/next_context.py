"""The context a layer is costed in: the channel alignment of the layer that runs after it.

A layer's latency depends on the next layer's alignment (a backend with a blocked channel layout
converts the layout back after a layer whose successor cannot use it), but a planning problem's
layer cost may depend only on that layer's own (cin, cout), which is what keeps the dynamic program
exact. Most of the next layer's widths follow from those: in a residual block the layer after
``hub -> inner`` is ``inner -> hub``, and the layer after ``inner -> hub`` reads the hub. The widths
that do not (the next block's inner width) are taken as in the dense network, so the dense network is
costed exactly, and a plan whose misaligned width is not visible from the layer before is left to the
closed loop's measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

from latprune.network import ALIGNMENT_CAP, LayerInfo, channel_alignment
from latprune.planner.problem import LayerTerm


class NextLayerContext:
    """``align(i, cin, cout)``: the next layer's alignment when layer ``i`` runs at ``cin -> cout``.

    ``terms`` and ``infos`` list the traced layers in execution order (``traced`` of them), then the bias
    layers of removable branches, which are costed before a layer as aligned as their own width.
    """

    def __init__(self, terms: Sequence[LayerTerm], infos: Sequence[LayerInfo], traced: int):
        self.terms, self.infos, self.traced = terms, infos, traced

    def align(self, index: int, cin: int, cout: int) -> int:
        if index >= self.traced:
            return channel_alignment(cout)
        if index + 1 == self.traced:
            return 0  # the network's output
        term, after, dense = self.terms[index], self.terms[index + 1], self.infos[index + 1]
        known = {}
        if len(term.in_groups) == 1:
            known[term.in_groups[0]] = cin - term.in_fixed
        if term.out_group is not None:
            known[term.out_group] = cout - term.out_fixed

        def width(groups: tuple[int, ...], fixed: int, dense_width: int) -> int:
            if all(g in known for g in groups):
                return fixed + sum(known[g] for g in groups)
            return dense_width

        next_cin = width(after.in_groups, after.in_fixed, dense.cin)
        next_cout = width(() if after.out_group is None else (after.out_group,), after.out_fixed, dense.cout)
        return channel_alignment(next_cin, next_cout) if next_cin and next_cout else ALIGNMENT_CAP
