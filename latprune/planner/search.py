"""A search on top of the latency DP, scored by the calibration loss of whole pruned networks.

As SPDY does for unstructured sparsity: the DP maximises the damage a plan avoids,
``sum_g c_g * (D_g(narrowest) - D_g(w_g))`` with the calibrated damage ``D_g`` of each group
(:mod:`latprune.planner.damage`) and one coefficient ``c_g`` per group. Damages do not add up
exactly (groups interact through depth), so the coefficients are searched: each candidate
coefficient vector gives a DP plan within the budget, the plan is scored by the actual loss of
the pruned network on calibration images (after a fast repair, supplied by the caller), and a
perturbation of the best coefficients so far is tried next, its scale shrinking over the time
box. The plain DP plan on channel importance is scored first and kept unless a candidate beats
it, so without the finalists' step below the search never returns a plan with a higher calibration loss
than the plain DP plan (with it, never one with a higher repaired loss).

Where residual branches can be removed, removal damages do not add up either (two removed blocks
hurt more than the sum of each alone), so the search starts from three families of plans: depth and
width together, width only and depth only (each a DP with the other choices forbidden). It scores
each family's damage-DP plan, then searches every family in turn, the best-scoring start first, each
for the whole time box (a DP over the widths the family allows). Searching only the family whose start
scored best left the others' leaders unsearched: on cifar resnet56 at 2x predicted the depth-only start
scored 1.47 and the depth-and-width start 2.63, so six searches explored depth only (15 branches removed,
72.9-74.7% after two-stage) while the unsearched depth-and-width start recovered to 76.0%
(``benchmarks.plan_proxy``). Sharing the time box between the families left a family short of what a
search of it alone finds: on cifar resnet20 at 0.6x a re-plan's depth-only family got a third of 15 s and
never left its start (repaired 0.383, 46.6% after two-stage) where the depth-only planner's own 15 s found
a plan repaired to 0.211 (73.2%; ``pareto_avx512_selection_r20b``).

The fast repair's loss ranks plans of one family well but not across families: after BatchNorm
recalibration alone a plan narrowing a whole stage scored ahead of one removing more branches, and after a
real repair the order was the other way round (cifar resnet20 at 0.5x, docs/planning.md). So where the
caller supplies a second, repaired loss, the finalists (the best plan of each family, the plain DP plan and
each family's own plain DP plan) are re-scored with it and the lowest wins. A family's plain DP plan is where a
planner held to that family starts; unscored by the repair it could be lost to the fast loss: on cifar resnet20
at 0.5x the depth-only planner's plain DP plan (fast loss 6.29, repaired 0.301) recovered to 58.9% while the
depth-only leader of the search (4.73, repaired 0.383) recovered to 53.9% (``pareto_avx2_refit_r20_05``).
Within one family the fast loss misleads too: over 11 plans of cifar resnet56 at 2x predicted, its rank
correlation with top-1 after two-stage was +0.70, the wrong sign (a 60 s search's best, loss 1.07, recovered to
76.0%; a 15 s search's best, 1.48, to 80.5%), the repaired loss's -0.38.
So more plans get the repair: the best plan scored at each other count of removed branches joins the finalists,
the ``finalists`` lowest of them. The repair costs what the search costs where a network is large: 45-72 s a
plan on EfficientNet-Lite0 at 176x176 (750 photos fitted, 250 held out), five finalists in each of the closed
loop's two searches took 9 of a 35-minute run (``imagenet_input_size_auto_finalists``). So the finalists are
repaired in the order of the search's own loss, and no more are started once the repair has taken as long as the
families' time boxes together (``final_share`` of them; two at least, else there is no choice); the others are
counted as left out.

The repaired loss still ranks structures wrongly at times (resnet56 at 0.5x: a depth-and-width plan 0.180 ahead
of a depth-only one at 0.246, reversed after two-stage). Where the caller supplies a third loss, the recovery the
user will run scored on images it did not fit, the best-repairing finalist of each structure (depth and width,
depth only, width only) is recovered and scored, the ``recovered`` best of them, and the lowest wins. It runs in
every search, the closed loop's re-plans included (plans recovered before are not recovered again): keeping the
first search's structure for the re-plans instead left resnet56 at 0.7x with the only depth-and-width finalist of
a quarter-length re-plan, unrepaired, a stage stream cut to 8 of 64 channels (35.7% after two-stage, depth-only
81.1%; ``pareto_avx512_selection``).
A re-plan near the last plan's budget does not search again. The closed loop's rounds after the first move the DP's
target by a few percent (2-4% in ``imagenet_input_size_176_boxed``) to chase a measurement, and each such re-plan
cost 204-214 s on EfficientNet-Lite0, repairing finalists it then mostly left out. Within ``nudge`` of the last
plan's target, where the damage DP made the last choice, that DP (its family and coefficients) is solved at the new
target; where that gives another plan removing the same branches and scoring no worse than the plain DP plan on the
search's own loss, it is returned (42-44 s a re-plan on Lite0, timing included). That is not the 0.7x failure above:
no perturbed coefficients, no unrepaired stranger, the choice's own objective at a budget a few percent away.
The importance DP's choice is not re-solved so: it knows nothing of damage, and a few percent away its plan can be
another network. On Lite0 at 176 (``imagenet_input_size_176_nudge``) the first search chose the plain DP plan;
re-solved 4.7% lower it cut the first block's 32 depthwise channels to 16 (fast loss 1.285, 8.8% top-1 pruned, 74.5%
after two-stage), and the loop's plans alternated between cutting it and not (measured over predicted 1.20-1.37).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from latprune.budget import Budget
from latprune.defaults import RECOVERED_PLANS, SEARCH_SECONDS
from latprune.errors import LatpruneError
from latprune.planner.api import PlanningInputs, build_plan, latency_plan
from latprune.planner.damage import DamageTable
from latprune.planner.families import plan_families, structure_of
from latprune.planner.plan import Plan
from latprune.planner.problem import PlanningProblem
from latprune.planner.records import DamageRecord, Finalist, SearchRecord
from latprune.planner.solver import Infeasible, solve

PlanLoss = Callable[[Mapping[str, Sequence[int]]], float]  # kept channels per group -> calibration loss


@dataclass(frozen=True)
class SearchSettings:
    """``seconds``: the time box of each family's search in a first search; a re-plan at another budget (closed
    loop) gives each family ``later_share`` of it and starts from each family's best coefficients found. Each
    family's search also stops after ``patience`` scored plans in a row without improvement, ``max_candidates``
    scored plans, or ``exhausted`` DP solves in a row that give no plan not scored before (a small family, such as
    depth only on a short network, runs out of plans long before its time box). With a repaired loss, up to
    ``finalists`` plans beside the families' leaders are repaired: the best at other depths; once the repair has
    taken ``final_share`` of the families' time boxes together, no more are started (two at least). With a
    recovered loss, the ``recovered`` best-repairing structures' best plans are recovered. Perturbations change the
    log-coefficients of a ``share`` of the groups by N(0, sigma), sigma shrinking geometrically from
    ``sigma_start`` to ``sigma_end`` over a family's time box. A later plan whose DP target lies within ``nudge``
    (a fraction) of the last plan's, where the last choice came from the damage DP, re-solves that DP (its family
    and coefficients) at it instead of searching again, where that gives another plan that removes the same
    branches (0: always search)."""

    seconds: float = SEARCH_SECONDS
    later_share: float = 0.25
    nudge: float = 0.05
    patience: int = 60
    max_candidates: int = 1000
    exhausted: int = 3000
    finalists: int = 3
    final_share: float = 1.0
    recovered: int = RECOVERED_PLANS
    share: float = 0.3
    sigma_start: float = 1.0
    sigma_end: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise LatpruneError(f"--search-seconds must be a non-negative number, got {self.seconds}")
        if not (math.isfinite(self.nudge) and 0 <= self.nudge < 1):
            raise LatpruneError(f"the search's nudge must be a fraction in [0, 1), got {self.nudge}")
        if not (math.isfinite(self.final_share) and self.final_share >= 0):
            raise LatpruneError(f"the finalists' share of the search time must be a non-negative number, got "
                                f"{self.final_share}")


@dataclass
class _Candidate:
    widths: tuple[int, ...]
    loss: float
    source: str
    family: str = ""  # the family whose DP made it
    log_c: np.ndarray | None = None  # the damage DP's log-coefficients; None: the importance DP made it


@dataclass(frozen=True)
class _Choice:
    """The last plan returned, as a recipe: a DP objective and the target it was solved at."""

    candidate: _Candidate
    target_ms: float


class CalibratedSearch:
    """Plans on the calibrated objective; keeps the scored plans and the best coefficients between calls."""

    def __init__(self, damage: DamageTable, loss: PlanLoss, settings: SearchSettings = SearchSettings(),
                 progress: bool = True, description: str = "calibration loss of the pruned network",
                 repaired: PlanLoss | None = None, recovered: PlanLoss | None = None):
        self.damage, self.loss, self.settings, self.progress = damage, loss, settings, progress
        self.description = description
        self.repaired = repaired  # a stronger loss the finalists are re-scored with; its ``description`` says what
        self.losses: dict[tuple[int, ...], float] = {}
        self.repaired_losses: dict[tuple[int, ...], float] = {}
        self.recovered = recovered  # the user's recovery, scored on images it did not fit; ``description`` says what
        self.recovered_losses: dict[tuple[int, ...], float] = {}
        self.log_coefficients: dict[str, np.ndarray] = {}  # per family, the best found so far
        self.searches = 0
        self._last: _Choice | None = None

    def plan(self, inputs: PlanningInputs, budget: Budget, bins: int = 2000, max_macs: float | None = None) -> Plan:
        """The best-scoring plan found within the time box whose predicted latency meets the budget (near the last
        plan's target, the last choice's objective re-solved: see ``SearchSettings.nudge``)."""
        began = time.perf_counter()
        settings = self.settings
        seconds = settings.seconds * (1.0 if self.searches == 0 else settings.later_share)
        plain = latency_plan(inputs, budget, bins=bins, max_macs=max_macs)
        problem = inputs.latency_problem()
        damage_saved = []
        for group, candidates in zip(inputs.groups, problem.candidates):
            damage = self.damage.at(group.id, candidates)
            damage_saved.append(damage[0] - damage)
        families = {}  # per family: its DP over the widths it allows, and the damage each of them saves
        held = []  # the families that forbid some width: their importance DP is not the plain DP
        for family, forbidden in plan_families(problem.candidates).items():
            allowed = [~f for f in forbidden]
            families[family] = (problem.restricted(allowed), [v[a] for v, a in zip(damage_saved, allowed)])
            if any(f.any() for f in forbidden):
                held.append(family)
        scored_before = len(self.losses)

        def solved(family_problem: PlanningProblem) -> tuple[int, ...] | None:
            try:
                choice = solve(family_problem, budget.target_ms, bins).choice
            except Infeasible:
                return None  # this family has no plan within the budget
            widths = family_problem.widths(choice)
            if max_macs is not None and inputs.macs.cost_of_widths(widths) * 1e6 > max_macs:
                return None
            return tuple(widths)

        def widths_at(log_c: np.ndarray, family: str) -> tuple[int, ...] | None:
            family_problem, saved = families[family]
            return solved(family_problem.with_values([math.exp(c) * v for c, v in zip(log_c, saved)]))

        last = self._last
        if (settings.nudge > 0 and last is not None and last.candidate.log_c is not None
                and last.candidate.family in families and abs(budget.target_ms / last.target_ms - 1) <= settings.nudge):
            widths = widths_at(last.candidate.log_c, last.candidate.family)
            if (widths is not None and widths != last.candidate.widths
                    and set(inputs.removed_at(widths)) == set(inputs.removed_at(last.candidate.widths))):
                nudged = self._nudged(inputs, budget, plain, widths, began)
                if nudged is not None:
                    return nudged

        leaders: dict[str, _Candidate] = {}  # the best plan scored in this search, per family
        scored: dict[tuple[int, ...], _Candidate] = {}  # every plan scored in this search, first source kept

        def score(widths: tuple[int, ...], source: str, family: str, log_c: np.ndarray | None = None,
                  leading: str | None = None) -> _Candidate:
            if widths not in self.losses:
                self.losses[widths] = self.loss(inputs.kept_at(widths))
            candidate = _Candidate(widths, self.losses[widths], f"{source}, {family}" if family else source, family,
                                   log_c)
            scored.setdefault(widths, candidate)
            leading = family if leading is None else leading
            if leading not in leaders or candidate.loss < leaders[leading].loss:
                leaders[leading] = candidate
            return candidate

        rng = np.random.default_rng(settings.seed + self.searches)
        plain_widths = tuple(plain.widths()[g.id] for g in inputs.groups)
        baseline = score(plain_widths, "plain DP", "", leading="plain DP")
        family_plain = []  # each held family's importance DP: where a planner held to that family starts
        for family in held:
            widths = solved(families[family][0])
            if widths is not None and widths != plain_widths:
                family_plain.append(score(widths, "plain DP", family, leading=f"plain DP, {family}"))
        starts = []
        for family in families:
            log_c = self.log_coefficients.get(family, np.zeros(len(inputs.groups)))
            start_widths = widths_at(log_c, family)
            if start_widths:
                starts.append((score(start_widths, "damage DP", family, log_c), family, log_c))
        starts.sort(key=lambda s: s[0].loss)
        best = min([baseline, *family_plain, *(s[0] for s in starts)], key=lambda c: c.loss)
        solves = len(families) + len(held)
        bar = tqdm(desc="plan search", unit="plan", disable=not self.progress, leave=False)

        def explore(current: _Candidate, family: str, log_c: np.ndarray) -> None:
            """Perturb the family's best coefficients so far until its time box or a stopping rule ends it."""
            nonlocal best, solves
            opened, scored_at_open, stale, repeats = time.perf_counter(), len(self.losses), 0, 0
            while (time.perf_counter() - opened < seconds and stale < settings.patience
                   and len(self.losses) - scored_at_open < settings.max_candidates and repeats < settings.exhausted):
                done = (time.perf_counter() - opened) / max(seconds, 1e-9)
                sigma = settings.sigma_start * (settings.sigma_end / settings.sigma_start) ** min(done, 1.0)
                moved = rng.random(len(log_c)) < settings.share
                moved[rng.integers(len(log_c))] = True
                trial = log_c + moved * rng.normal(0.0, sigma, len(log_c))
                widths = widths_at(trial, family)
                solves += 1
                fresh = widths is not None and widths not in self.losses
                repeats = 0 if fresh else repeats + 1
                if widths is None:
                    continue
                candidate = score(widths, "search", family, trial)
                bar.update(fresh)
                if candidate.loss < current.loss:
                    log_c, current, stale = trial, candidate, 0
                    if candidate.loss < best.loss:
                        best = candidate
                        bar.set_postfix(best=f"{best.loss:.4g}")
                elif fresh:
                    stale += 1
            self.log_coefficients[family] = log_c

        try:  # every family is searched as long as a search of that family alone would be
            for start, family, log_c in starts:
                explore(start, family, log_c)
        finally:
            bar.close()
        self.searches += 1
        final_began = time.perf_counter()
        final_box = settings.final_share * seconds * len(starts)
        best, finalists, recovered, left_out = self._final(inputs, best, leaders, scored.values(), final_box)
        self._last = _Choice(best, budget.target_ms)
        record = SearchRecord(
            objective=self.description, chosen_from=best.source, loss_chosen=float(best.loss),
            loss_plain_dp=float(baseline.loss), candidates_scored=len(self.losses) - scored_before, dp_solves=solves,
            seconds=time.perf_counter() - began, time_box_s=float(seconds), damage=self._damage_record(),
            final_objective=getattr(self.repaired, "description", "") if finalists else "",
            final_seconds=time.perf_counter() - final_began, finalists=finalists, finalists_left_out=left_out,
            selection_objective=getattr(self.recovered, "description", "") if recovered else "",
            structure=structure_of(inputs, best.widths) if recovered else "", recovered=recovered)
        chosen = build_plan(inputs, list(best.widths), "latency-search", budget, dict(plain.solver))
        return chosen.with_records(objective="calibrated", search=record)

    def _nudged(self, inputs: PlanningInputs, budget: Budget, plain: Plan, widths: tuple[int, ...],
                began: float) -> Plan | None:
        """The last choice's damage DP re-solved at this budget (``widths``), scored on the search's own loss with
        the plain DP plan, neither repaired nor recovered: the last choice was, and this plan removes the same
        branches. None where the plain DP plan scores lower: the re-solved objective has lost its way."""
        scored_before = len(self.losses)
        plain_widths = tuple(plain.widths()[g.id] for g in inputs.groups)
        for scored in (widths, plain_widths):
            if scored not in self.losses:
                self.losses[scored] = self.loss(inputs.kept_at(scored))
        if self.losses[widths] > self.losses[plain_widths]:
            return None
        last = dataclasses.replace(self._last.candidate, widths=widths, loss=self.losses[widths])
        self._last = _Choice(last, budget.target_ms)
        record = SearchRecord(
            objective=self.description, chosen_from=f"{last.source}, re-solved at this budget",
            loss_chosen=float(last.loss), loss_plain_dp=float(self.losses[plain_widths]),
            candidates_scored=len(self.losses) - scored_before, dp_solves=2, seconds=time.perf_counter() - began,
            time_box_s=0.0, damage=self._damage_record())
        chosen = build_plan(inputs, list(widths), "latency-search", budget, dict(plain.solver))
        return chosen.with_records(objective="calibrated", search=record)

    def _damage_record(self) -> DamageRecord:
        return DamageRecord(images=self.damage.images, seconds=float(self.damage.seconds),
                            cached=bool(self.damage.cached), key=self.damage.key)

    def _final(self, inputs: PlanningInputs, best: _Candidate, leaders: Mapping[str, _Candidate],
               scored: Iterable[_Candidate], box_s: float
               ) -> tuple[_Candidate, tuple[Finalist, ...], tuple[Finalist, ...], int]:
        """The plan to return: the lowest repaired loss among the finalists (the families' leaders and the best
        plans at other depths) repaired within ``box_s`` seconds, where a repaired loss is given and there are two
        or more; else the best plan on the search's own loss; with a recovered loss, as :meth:`_recovered_choice`
        picks. Also the finalists repaired, the plans recovered and how many finalists the box left out."""
        distinct: dict[tuple[int, ...], _Candidate] = {}  # one per plan: the lowest-loss source of it
        for candidate in sorted(leaders.values(), key=lambda c: c.loss):
            distinct.setdefault(candidate.widths, candidate)
        for candidate in self._best_at_other_depths(inputs, scored, distinct):
            distinct[candidate.widths] = candidate
        finalists = sorted(distinct.values(), key=lambda c: c.loss)
        if self.repaired is None or len(finalists) < 2:
            return best, (), (), 0
        began, repaired = time.perf_counter(), []
        for candidate in tqdm(finalists, desc="repairing finalists", unit="plan", disable=not self.progress,
                              leave=False):
            if candidate.widths not in self.repaired_losses:  # (one repaired in an earlier search is free)
                if len(repaired) >= 2 and time.perf_counter() - began >= box_s:
                    continue  # the box is spent: left out
                self.repaired_losses[candidate.widths] = self.repaired(inputs.kept_at(candidate.widths))
            repaired.append(candidate)
        chosen, recovered = self._recovered_choice(inputs, sorted(repaired,
                                                                  key=lambda c: self.repaired_losses[c.widths]))
        return chosen, tuple(Finalist(c.source, float(c.loss), float(self.repaired_losses[c.widths]))
                             for c in repaired), recovered, len(finalists) - len(repaired)

    def _recovered_choice(self, inputs: PlanningInputs,
                          ranked: list[_Candidate]) -> tuple[_Candidate, tuple[Finalist, ...]]:
        """Of finalists ranked by repaired loss: the first, without a recovered loss or with one structure among
        them; else the lowest recovered loss among the best of each structure (the ``recovered`` best-repairing
        structures). Also the plans recovered, with their losses."""
        if self.recovered is None:
            return ranked[0], ()
        leaders: dict[str, _Candidate] = {}
        for candidate in ranked:
            leaders.setdefault(structure_of(inputs, candidate.widths), candidate)
        contenders = list(leaders.values())[:self.settings.recovered]
        if len(contenders) < 2:
            return ranked[0], ()
        for candidate in tqdm(contenders, desc="recovering finalists", unit="plan", disable=not self.progress,
                              leave=False):
            if candidate.widths not in self.recovered_losses:
                self.recovered_losses[candidate.widths] = self.recovered(inputs.kept_at(candidate.widths))
        chosen = min(contenders, key=lambda c: self.recovered_losses[c.widths])  # ties: the better repaired
        return chosen, tuple(Finalist(c.source, float(c.loss), float(self.repaired_losses[c.widths]),
                                      float(self.recovered_losses[c.widths])) for c in contenders)

    def _best_at_other_depths(self, inputs: PlanningInputs, scored: Iterable[_Candidate],
                              finalists: Mapping[tuple[int, ...], _Candidate]) -> list[_Candidate]:
        """The lowest-loss plan at each count of removed branches no finalist has, the ``finalists`` lowest."""
        def removed(widths: tuple[int, ...]) -> int:
            return len(inputs.removed_at(widths))

        depths = {removed(w) for w in finalists}
        best: dict[int, _Candidate] = {}
        for candidate in scored:
            depth = removed(candidate.widths)
            if depth not in depths and (depth not in best or candidate.loss < best[depth].loss):
                best[depth] = candidate
        chosen = sorted(best.items(), key=lambda item: item[1].loss)[:self.settings.finalists]
        return [dataclasses.replace(c, source=f"{c.source}, best with {depth} removed") for depth, c in chosen]
