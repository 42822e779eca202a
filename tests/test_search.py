"""The calibrated objective: the damage table and its cache, and the search on calibration loss."""

import copy

import numpy as np
import pytest
import torch

from fixtures.fake_perf import MacsLatency
from latprune import pipeline
from latprune.analysis import analyse
from latprune.budget import Budget
from latprune.cli import main
from latprune.cli.text import search_line
from latprune.errors import LatpruneError
from latprune.plan_scoring import CalibrationLoss
from latprune.planner.api import latency_plan, prepare
from latprune.planner.damage import measure_damage, measured_widths, output_loss
from latprune.planner.families import plan_families
from latprune.planner.search import CalibratedSearch, SearchSettings
from latprune.planner.solver import solve
from latprune.planner.widths import WidthPolicy


@pytest.fixture(scope="module")
def inputs(resnet20):
    return prepare(analyse(resnet20), "l2", policy=WidthPolicy(step=16), perf=MacsLatency(), backend="fake")


@pytest.fixture(scope="module")
def table(inputs, calib, tmp_path_factory):
    """The damage table of the first 16 calibration images, measured once for the searches (about 1.5 s each)."""
    return _damage(inputs, calib[:16], tmp_path_factory.mktemp("damage"))


def _damage(inputs, images, cache_dir, model=None, scores=None):
    analysis = inputs.analysis
    return measure_damage(model or analysis.model, analysis.spec, inputs.groups, analysis.layout,
                          scores or inputs.scores, inputs.macs.candidates, images, cache_dir=cache_dir,
                          progress=False)


def test_damage_is_zero_at_full_width_and_never_grows_with_width(inputs, table):
    assert set(table.widths) == {g.id for g in inputs.groups}
    for group in inputs.groups:
        widths, damage = table.widths[group.id], table.damage[group.id]
        assert widths[-1] == group.width and damage[-1] == 0.0
        assert widths == sorted(widths) and all(a >= b for a, b in zip(damage, damage[1:]))
    narrowest = [table.damage[g.id][0] for g in inputs.groups]
    assert max(narrowest) > 0  # pruning a random-but-trained-like network does change its outputs


def test_damage_cache_is_reused_only_for_the_same_weights_images_and_channel_order(inputs, calib, tmp_path):
    first = _damage(inputs, calib[:16], tmp_path)
    again = _damage(inputs, calib[:16], tmp_path)
    assert not first.cached and again.cached
    assert again.key == first.key and again.damage == first.damage and again.widths == first.widths

    other_images = _damage(inputs, calib[16:32], tmp_path)
    assert not other_images.cached and other_images.key != first.key

    model = copy.deepcopy(inputs.analysis.model)
    with torch.no_grad():
        next(model.parameters())[0].mul_(1.5)
    other_weights = _damage(inputs, calib[:16], tmp_path, model=model)
    assert not other_weights.cached and other_weights.key != first.key
    assert other_weights.damage != first.damage

    reordered = {gid: s[::-1].copy() for gid, s in inputs.scores.items()}
    other_order = _damage(inputs, calib[:16], tmp_path, scores=reordered)
    assert not other_order.cached and other_order.key != first.key
    assert len(list((tmp_path / "damage").glob("*.json"))) == 4


def test_a_corrupt_cache_entry_is_measured_again(inputs, calib, tmp_path):
    first = _damage(inputs, calib[:16], tmp_path)
    (tmp_path / "damage" / f"{first.key}.json").write_text("{not json")
    again = _damage(inputs, calib[:16], tmp_path)
    assert not again.cached and again.damage == first.damage


def test_measured_widths_thin_evenly_and_keep_both_ends():
    assert measured_widths(np.arange(1, 5)) == [1, 2, 3, 4]
    thinned = measured_widths(np.arange(1, 65), max_points=8)
    assert len(thinned) == 8 and thinned[0] == 1 and thinned[-1] == 64


def test_output_loss_is_kl_of_class_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    assert output_loss(logits, logits) == pytest.approx(0.0, abs=1e-12)
    p, q = logits.softmax(1).double(), torch.zeros_like(logits).softmax(1).double()
    expected = float((p * (p.log() - q.log())).sum(1).mean())
    assert output_loss(logits, torch.zeros_like(logits)) == pytest.approx(expected)


def _search(table, loss, seconds=1.0):
    return CalibratedSearch(table, loss, SearchSettings(seconds=seconds, patience=1000), progress=False)


def test_search_never_returns_a_plan_scoring_worse_than_the_plain_dp_plan(inputs, table, calib):
    loss = CalibrationLoss(inputs.analysis, calib)
    budget = Budget(0.6 * inputs.dense_ms(), "given")
    search = _search(table, loss)
    plan = search.plan(inputs, budget)
    plain = latency_plan(inputs, budget)
    record = plan.search
    assert plan.objective == "calibrated" and plan.method == "latency-search"
    assert record.loss_plain_dp == pytest.approx(loss(plain.kept()))
    assert record.loss_chosen == pytest.approx(loss(plan.kept()))  # the record is the chosen plan's own loss
    assert record.loss_chosen <= record.loss_plain_dp
    assert record.candidates_scored >= 2 and record.dp_solves >= record.candidates_scored - 1
    assert plan.predicted_ms <= budget.target_ms


def test_search_keeps_the_plain_dp_plan_when_nothing_scores_better(inputs, table):
    budget = Budget(0.6 * inputs.dense_ms(), "given")
    plain = latency_plan(inputs, budget).kept()
    plan = _search(table, lambda kept: 0.0 if kept == plain else 1.0).plan(inputs, budget)
    assert plan.kept() == plain and plan.search.chosen_from == "plain DP"


def test_search_follows_its_loss(inputs, table):
    """A loss that only wants the first group wide: the search finds plans the plain DP does not."""
    first = inputs.groups[0]
    budget = Budget(0.5 * inputs.dense_ms(), "given")
    plan = _search(table, lambda kept: -len(kept[first.id])).plan(inputs, budget)
    assert plan.search.loss_chosen <= plan.search.loss_plain_dp
    assert plan.widths()[first.id] >= latency_plan(inputs, budget).widths()[first.id]
    assert plan.predicted_ms <= budget.target_ms


def test_a_second_search_starts_from_the_first_and_reuses_scored_plans(inputs, table):
    calls = []

    def loss(kept):
        calls.append(tuple(len(v) for v in kept.values()))
        return float(sum(len(v) for v in kept.values()))

    search = _search(table, loss)
    budget = Budget(0.6 * inputs.dense_ms(), "given")
    search.plan(inputs, budget)
    scored = len(calls)
    search.plan(inputs, budget)
    assert search.log_coefficients and search.searches == 2
    assert len(calls) - scored < scored or scored <= 2  # known plans are not scored again
    assert len(set(calls)) == len(calls)


def test_the_calibrated_objective_needs_images_and_the_latency_planner(inputs):
    settings = pipeline.PlanSettings(objective="calibrated")
    with pytest.raises(LatpruneError, match="needs unlabeled calibration images"):
        pipeline.calibrated_search(inputs, settings, None)
    with pytest.raises(LatpruneError, match="latency planner only"):
        pipeline.PlanSettings(method="flops", objective="calibrated")
    with pytest.raises(LatpruneError, match="unknown objective"):
        pipeline.PlanSettings(objective="accuracy")
    with pytest.raises(LatpruneError, match="non-negative"):
        SearchSettings(seconds=float("nan"))


def test_plan_command_refuses_the_calibrated_objective_without_images(capsys):
    code = main(["plan", "--model", "cifar:resnet20", "--backend", "ort-cpu", "--speedup", "1.5",
                 "--objective", "calibrated", "--no-verify", "--db", "/nonexistent/p.sqlite"])
    assert code != 0
    assert "calibrat" in capsys.readouterr().err


def test_plan_families_forbid_removal_or_partial_widths():
    assert list(plan_families([np.array([4, 8])])) == [""]
    families = plan_families([np.array([0, 8, 16]), np.array([4, 8])])
    assert [f.tolist() for f in families["depth and width"]] == [[False] * 3, [False] * 2]
    assert [f.tolist() for f in families["width only"]] == [[True, False, False], [False, False]]
    assert [f.tolist() for f in families["depth only"]] == [[False, True, False], [True, False]]
    # where every candidate is 0 or full, depth and width is depth only: searched once, not twice
    families = plan_families([np.array([0, 16]), np.array([8])])
    assert list(families) == ["depth only", "width only"]
    assert [f.tolist() for f in families["depth only"]] == [[False, False], [False]]


def test_a_family_plans_on_its_own_widths_only(inputs):
    """A family's DP holds only the widths it allows, and it shares the latency problem's cost cache."""
    problem = inputs.latency_problem()
    families = plan_families(problem.candidates)
    allowed = [~f for f in families["depth only"]]
    restricted = problem.restricted(allowed)
    assert all(set(c.tolist()) <= {0, full} for c, full in zip(restricted.candidates, inputs.full_widths))
    assert [len(c) for c in restricted.candidates] == [int(a.sum()) for a in allowed]
    assert restricted.values[0].tolist() == problem.values[0][allowed[0]].tolist()
    widths = restricted.widths(restricted.fastest())
    assert restricted.cost_of_widths(widths) == problem.cost_of_widths(widths) and restricted._cache is problem._cache


@pytest.mark.parametrize("wanted", ["width only", "depth only"])
def test_search_finds_the_family_its_loss_prefers(inputs, table, wanted):
    """Removal damages do not add up: the search scores width-only and depth-only plans too, and keeps the
    family whose plans its loss prefers."""
    full = {g.id: g.width for g in inputs.groups}

    def loss(kept) -> float:
        removed = sum(not len(k) for k in kept.values())
        partial = sum(0 < len(k) < full[gid] for gid, k in kept.items())
        return float(removed if wanted == "width only" else partial)

    budget = Budget(0.7 * inputs.dense_ms(), "given")
    plan = _search(table, loss).plan(inputs, budget)
    widths = plan.widths()
    assert plan.search.loss_chosen == 0.0
    if wanted == "width only":
        assert min(widths.values()) > 0 and not plan.removed
    else:
        assert set(widths.values()) <= {0, *full.values()} and plan.removed
        assert all(widths[gid] in (0, full[gid]) for gid in widths)
    assert plan.predicted_ms <= budget.target_ms


def test_every_family_is_searched_not_only_the_best_start(inputs, table):
    """The loss prefers depth-only plans, so the depth-only start scores best; the width-only and the depth-and-
    width families are searched too (plans of each beyond its start are scored), each up to its own plan count."""
    full = {g.id: g.width for g in inputs.groups}

    def partial(kept) -> float:
        return float(sum(0 < len(k) < full[gid] for gid, k in kept.items()))

    search = CalibratedSearch(table, partial, SearchSettings(seconds=600.0, patience=1000, max_candidates=20),
                              progress=False)
    search.plan(inputs, Budget(0.7 * inputs.dense_ms(), "given"))
    ids = [g.id for g in inputs.groups]
    kinds = {"width only": 0, "depth only": 0, "depth and width": 0}
    for widths in search.losses:
        removes, narrows = 0 in widths, any(0 < w < full[gid] for gid, w in zip(ids, widths))
        kinds["depth and width" if removes and narrows else "depth only" if removes else "width only"] += 1
    assert all(count >= 3 for count in kinds.values()), kinds
    assert set(search.log_coefficients) == set(kinds) and len(search.losses) <= 3 * 20 + 6


def test_a_family_that_runs_out_of_plans_stops_before_its_time_box(inputs, table):
    """At 0.9x of dense each family has few plans: once ``exhausted`` solves in a row give none not scored
    before, the family's search ends (without the rule the three families would take 600 s each)."""
    settings = SearchSettings(seconds=600.0, patience=1000, max_candidates=1000, exhausted=60)
    search = CalibratedSearch(table, lambda kept: float(sum(map(len, kept.values()))), settings, progress=False)
    record = search.plan(inputs, Budget(0.9 * inputs.dense_ms(), "given")).search
    assert record.seconds < 300 and record.dp_solves >= 60 and record.candidates_scored < 3 * 1000


def test_finalists_are_chosen_by_the_repaired_loss(inputs, table):
    """The search's own loss prefers width-only plans, the repaired loss depth-only ones: the family leaders are
    re-scored and the depth-only leader returned, with every finalist recorded."""
    full = {g.id: g.width for g in inputs.groups}

    def removed(kept) -> float:
        return float(sum(not len(k) for k in kept.values()))

    def partial(kept) -> float:
        return float(sum(0 < len(k) < full[gid] for gid, k in kept.items()))

    search = CalibratedSearch(table, removed, SearchSettings(seconds=1.0, patience=1000), progress=False,
                              repaired=partial)
    budget = Budget(0.7 * inputs.dense_ms(), "given")
    plan = search.plan(inputs, budget)
    record = plan.search
    assert plan.removed and all(w in (0, full[gid]) for gid, w in plan.widths().items())
    assert "depth only" in record.chosen_from and record.loss_chosen > 0.0  # not the search loss's favourite
    assert len(record.finalists) >= 2 and "plain DP" in {f.source for f in record.finalists}
    assert min(f.repaired_loss for f in record.finalists) == 0.0 == partial(plan.kept())
    assert [f.loss for f in record.finalists] == sorted(f.loss for f in record.finalists)
    again = type(record).from_json(record.to_json(), "the plan")
    assert again == record


def test_each_familys_plain_dp_plan_is_a_finalist(inputs, table):
    """The plan a depth-only planner starts from (the importance DP over removal or full width) is repaired beside
    the leaders, so it is returned where the repaired loss prefers it, whatever the search's own loss says."""
    problem = inputs.latency_problem()
    budget = Budget(0.7 * inputs.dense_ms(), "given")
    families = plan_families(problem.candidates)
    held = {name: problem.restricted([~f for f in forbidden]) for name, forbidden in families.items()}
    starts = {name: dp.widths(solve(dp, budget.target_ms, 2000).choice) for name, dp in held.items()}
    ids = [g.id for g in inputs.groups]
    wanted = {gid: w for gid, w in zip(ids, starts["depth only"])}
    assert wanted != latency_plan(inputs, budget).widths() and 0 in wanted.values()

    def widths(kept) -> dict:
        return {gid: len(k) for gid, k in kept.items()}

    def fast(kept) -> float:  # prefers every plan to the depth-only plain DP plan
        return 1.0 if widths(kept) == wanted else 0.0

    def repaired(kept) -> float:
        return 0.0 if widths(kept) == wanted else 1.0

    search = CalibratedSearch(table, fast, SearchSettings(seconds=0.5, patience=1000), progress=False,
                              repaired=repaired)
    plan = search.plan(inputs, budget)
    sources = {f.source: f for f in plan.search.finalists}
    assert plan.widths() == wanted and plan.search.chosen_from == "plain DP, depth only"
    assert sources["plain DP, depth only"].loss == 1.0 and sources["plain DP, depth only"].repaired_loss == 0.0
    width_only = {gid: w for gid, w in zip(ids, starts["width only"])}
    assert ("plain DP, width only" in sources) == (width_only != latency_plan(inputs, budget).widths())


def test_the_finalists_repair_stops_when_its_time_box_is_spent(inputs, table):
    """With no time for the repair, the two finalists the search's own loss ranks first are repaired (a choice
    needs two) and the others are counted as left out; with time, every finalist is repaired."""
    full_width = {g.id: g.width for g in inputs.groups}
    calls = []

    def fast(kept) -> float:
        return sum(not len(k) for k in kept.values()) + 0.01 * sum(len(k) < full_width[g] for g, k in kept.items())

    def repaired(kept) -> float:
        calls.append(kept)
        return 1.0 / len(calls)  # the later repaired, the better

    budget = Budget(0.7 * inputs.dense_ms(), "given")
    records = {}
    for share in (0.0, 1.0):
        calls.clear()
        settings = SearchSettings(seconds=600.0, patience=1000, max_candidates=15, final_share=share)
        plan = CalibratedSearch(table, fast, settings, progress=False, repaired=repaired).plan(inputs, budget)
        records[share] = (plan.search, len(calls))
    (boxed, boxed_calls), (full, full_calls) = records[0.0], records[1.0]
    assert full.finalists_left_out == 0 and full_calls == len(full.finalists) > 2
    assert boxed_calls == len(boxed.finalists) == 2
    assert boxed.finalists_left_out == len(full.finalists) - 2
    assert [(f.source, f.loss) for f in boxed.finalists] == [(f.source, f.loss) for f in full.finalists[:2]]
    assert boxed.chosen_from == boxed.finalists[1].source  # the lower repaired loss of the two
    assert "not repaired" not in search_line(full.to_json())
    assert f"{boxed.finalists_left_out} more not repaired" in search_line(boxed.to_json())
    assert type(boxed).from_json(boxed.to_json(), "the plan") == boxed


def test_disagreement_is_the_share_of_images_whose_top_class_changed():
    from latprune.plan_scoring import disagreement

    reference = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [5.0, 4.0, 0.0]])
    output = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 4.0], [2.0, 0.0, 1.0], [9.0, 4.0, 0.0]])
    assert disagreement(reference, output) == 0.5 and disagreement(reference, reference) == 0.0
    single = torch.tensor([1.0, 2.0])  # one score per image has no top class: the output loss instead
    assert disagreement(single, single + 1.0) == output_loss(single, single + 1.0) > 0.0


def test_repaired_loss_holds_images_out_and_scores_top_class_disagreement(monkeypatch):
    """Ridge on the first three quarters of at most FINALIST_IMAGES images, the share of the last quarter whose top
    class differs from the dense model's: none for the unpruned network, more the narrower the plan (the trained
    cifar resnet20 on real images: a random-weight network gives every image one class)."""
    import latprune.plan_scoring as scoring
    from conftest import CIFAR_TRAIN, shared_checkpoint
    from latprune.data import calibration_tensor
    from latprune.models import load_model

    loaded = load_model("cifar:resnet20", weights=str(shared_checkpoint("resnet20")))
    images = calibration_tensor(CIFAR_TRAIN, loaded.preprocessing, loaded.input_shape, size=128, seed=0)
    analysis = analyse(loaded)
    assert scoring.RepairedLoss.for_images(analysis, images[:16]) is None
    monkeypatch.setattr(scoring, "FINALIST_IMAGES", 100)
    loss = scoring.RepairedLoss.for_images(analysis, images)
    assert len(loss.fit) == 75 and len(loss.held) == 25
    assert torch.equal(loss.held, images[75:100])

    def share(fraction: int) -> float:
        return loss({g.id: list(range(max(1, g.width // fraction))) for g in analysis.groups})

    unpruned, halved, quartered = share(1), share(2), share(4)
    assert unpruned == 0.0 < halved < quartered <= 1.0, (halved, quartered)
    assert (halved * 25) == round(halved * 25)  # a share of the 25 held-out images


def test_the_best_plans_at_other_depths_are_repaired_too(inputs, table):
    """The search's own loss prefers one removed branch, the repaired loss two: beside the families' leaders the
    best plan at each other depth the search scored is repaired (at most ``finalists`` of them), so a plan at a
    depth no leader has can be returned; with ``finalists=0`` only the leaders compete."""
    full = {g.id: g.width for g in inputs.groups}

    def removed(kept) -> int:
        return sum(not len(k) for k in kept.values())

    def fast(kept) -> float:
        return abs(removed(kept) - 1) + 0.001 * sum(len(k) < full[gid] for gid, k in kept.items())

    def repaired(kept) -> float:
        return float(abs(removed(kept) - 2))

    budget = Budget(0.7 * inputs.dense_ms(), "given")
    plans = {}
    for extra in (0, 2):
        settings = SearchSettings(seconds=600.0, patience=1000, max_candidates=15, finalists=extra)
        plans[extra] = CalibratedSearch(table, fast, settings, progress=False, repaired=repaired).plan(inputs, budget)
    leaders, finalists = plans[0].search.finalists, plans[2].search.finalists
    extras = [f for f in finalists if "best with" in f.source]
    assert leaders and all("best with" not in f.source for f in leaders)
    assert {(f.source, f.loss) for f in leaders} <= {(f.source, f.loss) for f in finalists}
    assert 1 <= len(extras) <= 2 and len(finalists) == len(leaders) + len(extras)
    assert min(f.repaired_loss for f in leaders) > 0 and len(plans[0].removed) != 2
    assert len(plans[2].removed) == 2 and "best with 2 removed" in plans[2].search.chosen_from
    assert [f.loss for f in finalists] == sorted(f.loss for f in finalists)


def _near(budget: Budget, plan_at) -> Budget | None:
    """A budget 0.5-4.5% below ``budget`` at which ``plan_at`` (budget -> widths) gives another plan."""
    for factor in np.linspace(0.995, 0.955, 9):
        near = Budget(factor * budget.ms, "given")
        if plan_at(near) != plan_at(budget):
            return near
    return None


def _damage_dp(inputs, table, family: str):
    """The damage DP of a plan family with every coefficient 1 (the search's start for it): budget -> widths."""
    problem = inputs.latency_problem()
    allowed = [~f for f in plan_families(problem.candidates)[family]]
    saved = [d[0] - d for d in (table.at(g.id, c) for g, c in zip(inputs.groups, problem.candidates))]
    dp = problem.restricted(allowed).with_values([v[a] for v, a in zip(saved, allowed)])
    return lambda budget: tuple(dp.widths(solve(dp, budget.target_ms, 2000).choice))


def test_a_re_plan_near_the_last_budget_re_solves_the_last_choice_without_a_search(inputs, table):
    """The damage DP's start (coefficients 1, every width allowed) wins the first search; a re-plan 0.5-4.5% lower
    returns that DP's plan at its budget, scoring only it; without the nudge, or further away, the search runs
    again."""
    damage_dp_at = _damage_dp(inputs, table, "depth and width")

    def widths(kept) -> tuple:
        return tuple(len(k) for k in kept.values())

    budget = Budget(0.6 * inputs.dense_ms(), "given")
    calls = []

    def loss(kept) -> float:
        calls.append(widths(kept))
        return 0.0 if widths(kept) == damage_dp_at(budget) else 1.0

    search = _search(table, loss)
    assert search.plan(inputs, budget).search.chosen_from == "damage DP, depth and width"
    near = _near(budget, damage_dp_at)
    assert near is not None
    assert set(inputs.removed_at(damage_dp_at(near))) == set(inputs.removed_at(damage_dp_at(budget)))
    scored = len(calls)
    plan = search.plan(inputs, near)
    assert widths(plan.kept()) == damage_dp_at(near) and plan.predicted_ms <= near.target_ms
    assert calls[scored:] in ([damage_dp_at(near)], [damage_dp_at(near), widths(latency_plan(inputs, near).kept())])
    record = plan.search
    assert record.chosen_from == "damage DP, depth and width, re-solved at this budget" and record.time_box_s == 0.0
    assert record.finalists == () and record.loss_chosen == 1.0
    assert type(record).from_json(record.to_json(), "the plan") == record

    again = _search(table, loss)
    again.plan(inputs, budget)
    far = again.plan(inputs, Budget(0.8 * budget.ms, "given")).search
    off = CalibratedSearch(table, loss, SearchSettings(seconds=1.0, patience=1000, nudge=0.0), progress=False)
    off.plan(inputs, budget)
    plain_near = widths(latency_plan(inputs, near).kept())
    lost = _search(table, lambda kept: 0.5 if widths(kept) == plain_near else loss(kept))  # plain DP scores lower
    lost.plan(inputs, budget)
    for record in (far, off.plan(inputs, near).search, lost.plan(inputs, near).search):
        assert "re-solved" not in record.chosen_from and record.time_box_s > 0


def test_a_re_plan_after_the_plain_dp_plan_searches_again(inputs, table):
    """The importance DP knows nothing of damage: its plan a few percent away is not re-solved but searched."""
    budget = Budget(0.6 * inputs.dense_ms(), "given")
    first = latency_plan(inputs, budget).kept()
    search = _search(table, lambda kept: 0.0 if kept == first else 1.0)
    assert search.plan(inputs, budget).search.chosen_from == "plain DP"
    near = _near(budget, lambda b: latency_plan(inputs, b).widths())
    assert near is not None
    record = search.plan(inputs, near).search
    assert "re-solved" not in record.chosen_from and record.time_box_s > 0


def test_a_re_plan_that_would_remove_other_branches_searches_again(inputs, table):
    """The depth-only family's damage DP start wins; a little lower, that DP removes other branches (a depth-only
    plan can change no other way), so the re-plan is a search."""
    depth_only_at = _damage_dp(inputs, table, "depth only")
    budget, near = next((b, n) for b in (Budget(f * inputs.dense_ms(), "given") for f in np.arange(0.5, 0.95, 0.05))
                        if (n := _near(b, depth_only_at)) is not None)
    wanted = depth_only_at(budget)
    search = _search(table, lambda kept: float(tuple(len(k) for k in kept.values()) != wanted))
    assert search.plan(inputs, budget).search.chosen_from == "damage DP, depth only"
    assert set(inputs.removed_at(depth_only_at(near))) != set(inputs.removed_at(wanted))
    record = search.plan(inputs, near).search
    assert "re-solved" not in record.chosen_from and record.time_box_s > 0


def test_the_nudge_is_a_fraction():
    with pytest.raises(LatpruneError, match="nudge"):
        SearchSettings(nudge=1.0)
    assert SearchSettings(nudge=0.0).nudge == 0.0
