"""Closed-loop planning: solve, measure the plan on the device, learn from it, solve again.

A performance model is accurate where it was profiled and least accurate at the edge of the
width space, which is where an optimiser under a tight budget goes. So a plan is only
trusted once measured: each round solves under the current model, times the plan on the
target interleaved with the dense network, stores the plan's in-network layer times as
profile rows and refits the model on them (the model learns where plans live), then
corrects what the refit still misses by the plan's measured/predicted ratio and solves
again, aiming at the centre of the band ``[(1 - tol) x ceiling, ceiling]``. It stops in the
band, when the solver returns a plan already measured (after one try at the band's top when
the last plan measured below the band: the width grid may hold nothing nearer the centre), or
after ``max_rounds``. A budget below the fastest plan *as predicted* is not refused at once
when it lies within ``reach`` of it: the model is least sure at the narrowest widths, so the
fastest plan is measured first and the device decides.

A speedup is judged by the plan's latency relative to the dense network, paired round by
round (:func:`~latprune.network.paired_ratio`): a host that slows down for a while slows both
alike. A budget in milliseconds can only be judged by the plan's own median.

The loop is written against two small interfaces, so it is checked without a device:
a :class:`LoopModel` (solve, predict, learn) and a :class:`LoopDevice` (time a plan).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from latprune.budget import Budget, BudgetRequest
from latprune.defaults import LOOP_MAX_ROUNDS, LOOP_TOL
from latprune.errors import LatpruneError
from latprune.network import Measurement, paired_interval
from latprune.planner.plan import Plan
from latprune.planner.records import LoopRound, VerificationRecord


@dataclass(frozen=True)
class LoopSettings:
    """The band's relative width ``tol``, the round limit, the timing rounds per plan (at least
    ``timing_rounds``, then until the plan's paired ratio is known to +-1.5% or a cap), and ``reach``: how far
    below the predicted latency of the fastest plan a budget may lie and still be tried on the device."""

    tol: float = LOOP_TOL
    max_rounds: int = LOOP_MAX_ROUNDS
    timing_rounds: int = 7  # at least this many timing rounds per plan; then until the ratio is known to +-1.5%
    timing_max_rounds: int = 30
    timing_max_seconds: float = 45.0
    reach: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.tol < 0.5:
            raise LatpruneError(f"--tol must be in (0, 0.5), got {self.tol}")
        if self.max_rounds < 1:
            raise LatpruneError(f"--verify-rounds must be at least 1, got {self.max_rounds}")
        if self.timing_rounds < 2:
            raise LatpruneError(f"timing rounds must be at least 2, got {self.timing_rounds}")
        if not 0 <= self.reach < 1:
            raise LatpruneError(f"reach must be in [0, 1), got {self.reach}")


class Timing(Protocol):
    variant: Measurement
    dense: Measurement
    new_layer_rows: int
    seconds: float  # and optionally rejected_rounds: timing rounds left out (host contended or in its slow state)


class LoopDevice(Protocol):
    device: str

    def time(self, widths: Mapping[str, int]) -> Timing:
        """The plan's and the dense network's latency, timed in the same rounds (and recorded)."""


class LoopModel(Protocol):
    def solve(self, budget: Budget) -> Plan:
        """A plan aiming at ``budget.target_ms`` under the current performance model."""

    def predict(self, plan: Plan) -> float:
        """The current performance model's latency of ``plan``."""

    def learn(self) -> None:
        """Refit the performance model on everything measured so far."""

    def fastest_ms(self) -> float:
        """The current model's latency of the fastest plan it can make (every group at its narrowest)."""


def closed_loop(model: LoopModel, device: LoopDevice, request: BudgetRequest, first: Budget,
                settings: LoopSettings = LoopSettings(), on_round: Callable[[LoopRound], None] | None = None,
                correction: float = 1.0, start: Plan | None = None) -> Plan:
    """The plan whose measured latency lies in the band, else the fastest-to-budget plan that met it.

    ``first`` is the budget as resolved for planning (a speedup over the *predicted* dense
    latency); each round re-resolves the request against the dense latency measured in its
    own rounds. ``correction`` is measured over predicted latency as known before the first round
    (the dense model's, for a budget in milliseconds): the first plan aims at ``first`` divided by
    it. ``start`` (a plan made elsewhere, e.g. from this device's profile on another machine) is the first
    round's plan instead of a solve. The returned plan's ``verification`` records every round (each also passed to
    ``on_round`` when measured, for progress). Raises
    :class:`LatpruneError` when no measured plan met the budget (with the fastest measured).
    """
    began = time.perf_counter()
    centre = 1 - settings.tol / 2
    if not (math.isfinite(correction) and correction > 0):
        raise ValueError(f"correction must be a positive number, got {correction}")
    budget = dataclasses.replace(first, aim=centre / correction)
    rounds: list[LoopRound] = []
    plans: list[Plan] = []
    seen: set[tuple] = set()
    stop = f"round limit ({settings.max_rounds})"
    dense_rounds: list[list[float]] = []  # the dense network's samples of every round so far, pooled
    for index in range(settings.max_rounds):
        started = time.perf_counter()
        try:
            plan = start if start is not None and index == 0 else model.solve(budget)
        except LatpruneError as exc:
            fastest = model.fastest_ms()
            if not rounds and budget.ceiling_ms / correction < (1 - settings.reach) * fastest:
                raise  # far below the fastest plan as predicted: not worth a measurement
            try:  # the (corrected) aim asks for less than the fastest plan: measure the fastest plan itself
                # (a hair above its cost: fastest / ceiling * ceiling may round below fastest)
                plan = model.solve(dataclasses.replace(budget, aim=fastest * (1 + 1e-9) / budget.ceiling_ms))
            except LatpruneError:
                if not rounds:
                    raise exc from None
                stop = f"no plan under the corrected aim {budget.target_ms:.4g} ms: {exc}"
                break
        if _widths_key(plan) in seen and rounds[-1].verdict() == "below band":
            try:  # the width grid has no plan nearer the band's centre: try its top
                plan = model.solve(dataclasses.replace(budget, aim=budget.aim / centre))
            except LatpruneError:
                pass
        key = _widths_key(plan)
        if key in seen:
            stop = "the solver chose an already measured plan (no other plan lies nearer the band under the model)"
            break
        seen.add(key)
        timing = device.time(plan.widths())
        dense_rounds.extend(timing.dense.rounds)
        dense = Measurement.from_samples(dense_rounds)
        ratio = paired_interval(timing.variant, timing.dense)
        measured = request.judged_ms(ratio.ratio, dense.median_ms)
        judged = request.resolve(dense.median_ms, "measured dense")
        record = LoopRound(
            round=index + 1, aim_ms=budget.target_ms, correction=correction, predicted_ms=plan.predicted_ms,
            measured_ms=measured, raw_median_ms=timing.variant.median_ms, relative_to_dense=ratio.ratio,
            ratio_low=ratio.low, ratio_high=ratio.high, timing_rounds=ratio.rounds, p10_ms=timing.variant.p10_ms,
            p90_ms=timing.variant.p90_ms, spread=timing.variant.spread,
            **_judgement(measured, request.judged_ms(ratio.high, dense.median_ms), judged, dense.median_ms,
                         settings.tol),
            new_layer_rows=timing.new_layer_rows, timing_s=timing.seconds,
            rejected_rounds=getattr(timing, "rejected_rounds", 0))
        plans.append(plan)
        if on_round is not None:
            on_round(record)
        learn_s = None
        if not record.in_band and index + 1 < settings.max_rounds:
            learned = time.perf_counter()
            model.learn()
            learn_s = time.perf_counter() - learned
            correction = measured / model.predict(plan)
            budget = dataclasses.replace(judged, aim=centre / correction)
        rounds.append(dataclasses.replace(record, learn_s=learn_s, seconds=time.perf_counter() - started))
        if record.in_band:
            stop = "in band"
            break
    judged = request.resolve(dense.median_ms, "measured dense")
    final = []
    for r in rounds:
        measured = request.judged_ms(r.relative_to_dense, dense.median_ms)
        final.append(dataclasses.replace(r, measured_ms=measured,
                                         **_judgement(measured, request.judged_ms(r.ratio_high, dense.median_ms),
                                                      judged, dense.median_ms, settings.tol)))
    return _chosen(plans, final, rounds, stop, device.device, settings, time.perf_counter() - began)


def _widths_key(plan: Plan) -> tuple:
    return tuple(sorted(plan.widths().items()))


ROUND_COLUMNS = ("round", "aim ms", "predicted ms", "measured ms", "p10-p90 ms", "band ms", "correction", "result",
                 "seconds")


def round_cells(record: LoopRound) -> list[str]:
    """A round as table cells under :data:`ROUND_COLUMNS` (for the plan command and the run report)."""
    return [str(record.round), f"{record.aim_ms:.4g}", f"{record.predicted_ms:.4g}", f"{record.measured_ms:.4g}",
            f"{record.p10_ms:.4g}-{record.p90_ms:.4g}", f"{record.band_ms[0]:.4g}-{record.band_ms[1]:.4g}",
            f"{record.correction:.3f}", record.verdict(), f"{record.seconds:.1f}"]


def _judgement(measured_ms: float, high_ms: float, judged: Budget, dense_ms: float, tol: float) -> dict:
    """Whether a plan measured at ``measured_ms`` (its ratio's 95% interval reaching ``high_ms``) meets the budget
    and lies in the band. A plan below the band whose interval still reaches it counts as in band (down to one
    more band width): the measurement cannot tell it from a plan in the band, and re-planning would chase noise.
    Over the ceiling is never in band."""
    band = ((1 - tol) * judged.ceiling_ms, judged.ceiling_ms)
    in_band = band[0] <= measured_ms <= band[1] or (
        (1 - 2 * tol) * judged.ceiling_ms <= measured_ms < band[0] <= high_ms)
    return {"dense_measured_ms": dense_ms, "budget_ms": judged.ms, "band_ms": band,
            "meets": measured_ms <= judged.ms, "in_band": in_band}


def _chosen(plans: list[Plan], final: list[LoopRound], rounds: list[LoopRound], stop: str, device: str,
            settings: LoopSettings, seconds: float) -> Plan:
    """The in-band plan measured slowest (nearest the budget), else the met plan measured slowest; never one
    over it.

    ``final`` re-judges every round against the dense latency pooled over all rounds (a speedup's
    budget is only as steady as the dense measurement); ``rounds`` are the judgements as made.
    """
    met = [i for i, r in enumerate(final) if r.meets]
    if not met:
        fastest = min(final, key=lambda r: r.measured_ms)
        raise LatpruneError(
            f"no plan met the budget as measured on this device in {len(rounds)} round(s): the fastest measured "
            f"{fastest.measured_ms:.4g} ms against a budget of {fastest.budget_ms:.4g} ms (predicted "
            f"{fastest.predicted_ms:.4g} ms; {stop}); raise the budget or --verify-rounds")
    in_band = [i for i in met if final[i].in_band]
    best = max(in_band or met, key=lambda i: final[i].measured_ms)
    record = final[best]
    return plans[best].with_records(verification=VerificationRecord(
        verified=True, device=device, status="in band" if in_band else "met the budget, outside the band",
        tol=settings.tol, band_ms=record.band_ms, budget_ms=record.budget_ms, measured_ms=record.measured_ms,
        dense_measured_ms=record.dense_measured_ms, chosen_round=best + 1, rounds_used=len(rounds), stop=stop,
        seconds=seconds, rounds=tuple(rounds)))
