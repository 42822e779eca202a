"""The calibrated search's last stage: the best plan of each structure recovered as the user will recover it, scored
on images recovery did not fit; and the images it reads."""

import numpy as np
import pytest
import torch

from fixtures.fake_perf import MacsLatency
from latprune.analysis import analyse
from latprune.budget import Budget, BudgetRequest
from latprune.errors import LatpruneError
from latprune.planner.api import prepare
from latprune.planner.damage import measure_damage
from latprune.planner.families import structure_of
from latprune.planner.search import CalibratedSearch, SearchSettings
from latprune.planner.widths import WidthPolicy
from latprune.settings import RecoveryRequest, SelectionSettings


@pytest.fixture(scope="module")
def inputs(resnet20):
    return prepare(analyse(resnet20), "l2", policy=WidthPolicy(step=16), perf=MacsLatency(), backend="fake")


def _search(inputs, calib, tmp_path, recovered, recovered_plans=2):
    """A search whose own and repaired losses prefer depth-and-width plans, with ``recovered`` as its last stage."""
    full = {g.id: g.width for g in inputs.groups}

    def narrowed(kept) -> float:  # fewer narrowed groups, lower loss; removed branches cost a little more
        return sum(0 < len(k) < full[gid] for gid, k in kept.items()) * 0.01 + sum(not k for k in kept.values())

    def repaired(kept) -> float:  # depth and width < depth only < width only
        removes = any(not k for k in kept.values())
        narrows = any(0 < len(k) < full[gid] for gid, k in kept.items())
        return 0.1 if removes and narrows else 0.2 if removes else 0.3

    analysis = inputs.analysis
    table = measure_damage(analysis.model, analysis.spec, inputs.groups, analysis.layout, inputs.scores,
                           inputs.macs.candidates, calib[:16], cache_dir=tmp_path, progress=False)
    settings = SearchSettings(seconds=600.0, patience=1000, max_candidates=15, recovered=recovered_plans)
    return CalibratedSearch(table, narrowed, settings, progress=False, repaired=repaired, recovered=recovered)


def test_the_last_stage_recovers_each_structures_best_in_every_search(inputs, calib, tmp_path):
    """The repaired loss prefers depth and width, the recovered loss depth only: the best-repairing plan of the two
    best-repairing structures is recovered (two recoveries), the depth-only one returned; a re-plan at another
    budget (the closed loop's) runs the stage again, recovering no plan twice."""
    calls = []

    def recovered(kept) -> float:
        calls.append(tuple(tuple(k) for k in kept.values()))
        return 0.0 if all(len(k) in (0, g.width) for g, k in zip(inputs.groups, kept.values())) else 0.5

    search = _search(inputs, calib, tmp_path, recovered)
    plan = search.plan(inputs, Budget(0.7 * inputs.dense_ms(), "given"))
    widths = [plan.widths()[g.id] for g in inputs.groups]
    assert structure_of(inputs, widths) == "depth only" and len(calls) == 2
    record = plan.search
    assert record.structure == "depth only" and record.selection_objective == ""  # a plain callable: no description
    assert sorted(f.recovered_loss for f in record.recovered) == [0.0, 0.5]
    assert all(f.recovered_loss is None for f in record.finalists)
    assert type(record).from_json(record.to_json(), "the plan") == record

    again = search.plan(inputs, Budget(0.6 * inputs.dense_ms(), "given"))
    assert structure_of(inputs, [again.widths()[g.id] for g in inputs.groups]) == "depth only"
    assert again.search.structure == "depth only" and len(again.search.recovered) == 2
    assert 2 <= len(calls) <= 4 and len(set(calls)) == len(calls)


def test_without_a_recovered_loss_or_with_one_structure_the_repaired_loss_decides(inputs, calib, tmp_path):
    calls = []
    plain = _search(inputs, calib, tmp_path, None).plan(inputs, Budget(0.7 * inputs.dense_ms(), "given"))
    assert structure_of(inputs, [plain.widths()[g.id] for g in inputs.groups]) == "depth and width"
    assert plain.search.structure == "" and plain.search.recovered == ()

    one = _search(inputs, calib, tmp_path, lambda kept: calls.append(kept) or 0.0, recovered_plans=1)
    plan = one.plan(inputs, Budget(0.7 * inputs.dense_ms(), "given"))
    assert not calls and structure_of(inputs, [plan.widths()[g.id] for g in inputs.groups]) == "depth and width"


def test_structure_names_what_a_plan_does(inputs):
    full = inputs.full_widths
    branch = next(i for i, g in enumerate(inputs.groups) if 0 in inputs.macs.candidates[i])
    narrow = next(i for i, g in enumerate(inputs.groups) if i != branch and g.width > 16)
    removed, narrowed, both = list(full), list(full), list(full)
    removed[branch] = both[branch] = 0
    narrowed[narrow] = both[narrow] = 16
    assert [structure_of(inputs, w) for w in (full, removed, narrowed, both)] == [
        "width only", "depth only", "width only", "depth and width"]


def test_selection_runs_the_recipes_post_training_steps_only():
    assert SelectionSettings.for_recipe("two-stage+finetune", 512, 30.0) == SelectionSettings("two-stage", 512, 30.0)
    assert SelectionSettings.for_recipe("finetune", None, None).recipe is None
    assert SelectionSettings.for_recipe("none", None, None).images == 0
    assert SelectionSettings.for_recipe("bn", None, 60.0) == SelectionSettings("bn", seconds=60.0)
    assert RecoveryRequest(recipe="ridge", calib="x", calib_size=300).selection == SelectionSettings("ridge", 300)
    with pytest.raises(LatpruneError, match="post-training"):
        SelectionSettings("two-stage+overparam")
    with pytest.raises(LatpruneError, match="at least 1"):
        SelectionSettings(fit_images=0)


def test_recovered_loss_fits_on_recoverys_images_and_scores_the_ones_after(monkeypatch):
    """The trained cifar resnet20 on real images: recovery (ridge here) on the first ``fit_images``, the
    top-class disagreement on the rest; none without a recipe or with too few images after recovery's."""
    import latprune.plan_scoring as scoring
    from conftest import CIFAR_TRAIN, shared_checkpoint
    from latprune.data import calibration_tensor
    from latprune.models import load_model

    loaded = load_model("cifar:resnet20", weights=str(shared_checkpoint("resnet20")))
    images = calibration_tensor(CIFAR_TRAIN, loaded.preprocessing, loaded.input_shape, size=128, seed=0)
    analysis = analyse(loaded)
    selection = SelectionSettings("ridge", fit_images=64)
    assert scoring.RecoveredLoss.for_images(analysis, images, selection) is None  # 64 after it, 256 needed
    monkeypatch.setattr(scoring, "MIN_SELECTION_IMAGES", 64)
    assert scoring.RecoveredLoss.for_images(analysis, images[:127], selection) is None
    assert scoring.RecoveredLoss.for_images(analysis, images, SelectionSettings(None, 64)) is None
    assert scoring.RecoveredLoss.for_images(analysis, images, SelectionSettings("none", 64)) is None
    monkeypatch.setattr(scoring, "SELECTION_IMAGES", 50)
    loss = scoring.RecoveredLoss.for_images(analysis, images, selection)
    assert torch.equal(loss.fit, images[:64]) and torch.equal(loss.held, images[64:114])
    assert "50 calibration images" in loss.description and "after ridge on the first 64" in loss.description

    def share(fraction: int) -> float:
        return loss({g.id: list(range(max(1, g.width // fraction))) for g in analysis.groups})

    unpruned, halved, quartered = share(1), share(2), share(4)
    assert unpruned <= 0.1 and unpruned < halved < quartered <= 1.0, (unpruned, halved, quartered)
    assert np.isclose(halved * 50, round(halved * 50))  # a share of the 50 images after recovery's


def test_recovery_images_come_first_and_the_planners_extra_after_them(tmp_path):
    """A request reading 8 images with 4 extra reads 12, the first 8 of them the 8 it reads alone: a random draw even
    when the folder holds no more (not the folder's first two classes)."""
    from PIL import Image

    from latprune.models import load_model

    for cls in range(3):
        (tmp_path / f"c{cls}").mkdir()
        for i in range(4):
            Image.new("RGB", (32, 32), (80 * cls, 7 * i, 0)).save(tmp_path / f"c{cls}" / f"{i}.png")
    loaded = load_model("cifar:resnet20")
    request = RecoveryRequest(recipe="two-stage", calib=str(tmp_path), calib_size=8)
    alone, _ = request.images(loaded)
    more, _ = request.images(loaded, extra=4)
    assert len(alone) == 8 and len(more) == 12 and torch.equal(more[:8], alone)


def test_the_plan_text_names_the_recovered_finalists_and_the_structure_chosen():
    from latprune.cli.text import search_line
    from latprune.planner.records import DamageRecord, Finalist, SearchRecord

    record = SearchRecord(
        objective="KL", chosen_from="damage DP, depth only", loss_chosen=1.5, loss_plain_dp=3.0, candidates_scored=9,
        dp_solves=12, seconds=20.0, time_box_s=15.0, damage=DamageRecord(images=64, seconds=3.0, cached=True, key="k"),
        final_objective="ridge disagreement", final_seconds=200.0,
        finalists=(Finalist("damage DP, depth only", 1.5, 0.25), Finalist("search, depth and width", 1.6, 0.18),
                   Finalist("plain DP", 3.0, 0.8)),
        selection_objective="two-stage disagreement", structure="depth only",
        recovered=(Finalist("damage DP, depth only", 1.5, 0.25, 0.19), Finalist("search, depth and width", 1.6, 0.18,
                                                                                0.21)))
    assert type(record).from_json(record.to_json(), "the plan") == record
    line = search_line(record.to_json())
    assert "finalists by ridge disagreement (200.0 s): 0.25 damage DP, depth only, 0.18 search" in line
    assert ("recovered by two-stage disagreement: 0.19 damage DP, depth only, 0.21 search, depth and width; "
            "structure depth only") in line
    assert "plain DP" not in line.split("recovered by")[1]


def test_recovered_plans_option_and_the_jobs_last_stage_recipe_and_extra_images():
    from latprune.cli.app import build_parser
    from latprune.cli.requests import plan_settings
    from latprune.job import JobConfig

    command = ["plan", "--model", "cifar:resnet20", "--backend", "ort-cpu", "--speedup", "2"]
    assert plan_settings(build_parser().parse_args([*command, "--recovered-plans", "0"])).search.recovered == 0
    assert plan_settings(build_parser().parse_args(command)).search.recovered == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--recovered-plans", "-1"])

    job = JobConfig(model="cifar:resnet20", budget=BudgetRequest(speedup=2.0), calib="x", recovery="ridge+finetune",
                    calib_size=300)
    assert job.plan_settings().selection == SelectionSettings("ridge", 300)
    assert job.plan_settings().extra_images == 1024
    off = JobConfig(model="cifar:resnet20", budget=BudgetRequest(speedup=2.0), calib="x", recovery="ridge",
                    search=SearchSettings(recovered=1))
    assert off.plan_settings().extra_images == 0
