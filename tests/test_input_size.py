"""Planning at a smaller input size: the shapes and preprocessing at that size, the budget left for the widths, and
the paired timing of networks that take different input shapes."""

import pytest
import torch.nn as nn

from latprune.budget import BudgetRequest
from latprune.errors import LatpruneError
from latprune.input_size import InputSize, check_input_size, input_shape_at, preprocessing_at
from latprune.network import PairedRatio
from latprune.preprocessing import Preprocessing
from latprune.profiler.api import RoundsRule, measure_paired


def test_the_shorter_side_takes_the_size_and_the_aspect_is_kept():
    assert input_shape_at((1, 3, 224, 224), 192) == (1, 3, 192, 192)
    assert input_shape_at((2, 3, 240, 320), 180) == (2, 3, 180, 240)
    assert input_shape_at((1, 1, 300, 200), 100) == (1, 1, 150, 100)


@pytest.mark.parametrize("size", [224, 300, 7, 0, 191.5, True])
def test_a_size_not_smaller_than_the_model_input_or_too_small_is_refused(size):
    with pytest.raises(LatpruneError, match="--input-size must be a whole number of pixels from 8 to 223"):
        check_input_size(size, (1, 3, 224, 224))


def test_the_resize_keeps_the_field_of_view():
    lite0 = Preprocessing(mean=(0.498,) * 3, std=(0.502,) * 3, resize=256)
    assert preprocessing_at(lite0, (1, 3, 224, 224), 192) == {"resize": 219}  # 256 x 192 / 224 = 219.4
    assert preprocessing_at(Preprocessing(), (1, 3, 224, 224), 160) == {"resize": 183}  # 256 x 160 / 224 = 182.9
    with pytest.raises(LatpruneError, match="takes images as they are at 32x32: give its resize with --resize"):
        preprocessing_at(Preprocessing(exact=True), (1, 3, 32, 32), 24)


def sized(ratio: float) -> InputSize:
    return InputSize((1, 3, 224, 224), (1, 3, 192, 192), PairedRatio(ratio, ratio - 0.01, ratio + 0.01, 20), "x")


def test_the_widths_plan_for_what_the_size_leaves_of_a_speedup():
    left = sized(0.766).request(BudgetRequest(speedup=1.5, margin=0.02))
    assert left.speedup == pytest.approx(1.149) and left.margin == 0.02
    assert sized(0.766).request(BudgetRequest(budget_ms=3.0)) == BudgetRequest(budget_ms=3.0)  # ms hold at any size
    assert sized(0.766).request(BudgetRequest(speedup=1.31)).speedup == pytest.approx(1.31 * 0.766)
    data = sized(0.766).to_json()
    assert data["native_input_shape"] == [1, 3, 224, 224] and data["dense_ratio"]["ratio"] == 0.766


def test_a_size_whose_dense_network_meets_the_speedup_leaves_nothing_to_plan():
    assert sized(0.766).alone_meets(BudgetRequest(speedup=1.25))  # 1.25 x 0.776 (the interval's top) = 0.97
    assert sized(0.79).alone_meets(BudgetRequest(speedup=1.25))  # the interval's top exactly at the budget
    assert not sized(0.766).alone_meets(BudgetRequest(speedup=1.31))  # 1.31 x 0.766 = 1.003
    assert sized(0.766).describe_uncertain(BudgetRequest(speedup=1.25)) is None
    assert not sized(0.1).alone_meets(BudgetRequest(budget_ms=3.0))  # milliseconds: the planner's to judge
    assert sized(0.766).describe_alone(BudgetRequest(speedup=1.25)).startswith(
        "at 192x192 the dense network alone runs at 0.766 of its latency at 224x224 (paired, 95% interval "
        "0.756-0.776), which meets --speedup 1.25: no channel is pruned")
    with pytest.raises(ValueError, match="the size alone meets --speedup 1.25"):
        sized(0.766).request(BudgetRequest(speedup=1.25))


def test_a_size_met_only_by_its_median_leaves_the_widths_what_its_interval_could_hide():
    """1.25 x 0.795 = 0.994 meets the budget, 1.25 x 0.805 (the interval's top) does not: widths are planned, aiming
    at the interval's top, and the run says why."""
    asked = BudgetRequest(speedup=1.25)
    assert not sized(0.795).alone_meets(asked)
    assert sized(0.795).request(asked).speedup == pytest.approx(1.25 * 0.805)
    assert sized(0.795).describe_uncertain(asked) == (
        "at 192x192 the dense network runs at 0.795 of its latency at 224x224, within --speedup 1.25, but its 95% "
        "interval reaches 0.805: widths are planned for the rest, the closed loop judging them")
    assert sized(0.81).describe_uncertain(asked) is None  # the ratio itself misses: widths as always
    assert sized(0.795).describe_uncertain(BudgetRequest(budget_ms=3.0)) is None


def test_the_plan_of_a_size_alone_keeps_every_channel():
    from latprune import pipeline
    from latprune.input_size import SIZE_ONLY, load_at_size, unpruned_plan

    native = pipeline.load("cifar:resnet20", preprocessing={"resize": 36})
    analysis = pipeline.analyse(load_at_size(native, None, 24, {"resize": 36}))
    budget = BudgetRequest(speedup=1.5).resolve(3.0, "measured dense")
    plan = unpruned_plan(analysis, budget)
    assert plan.method == SIZE_ONLY and plan.input_shape == [1, 3, 24, 24] and plan.removed == []
    assert all(g.width == g.full_width and g.kept == list(range(g.full_width)) for g in plan.groups)
    assert plan.macs == plan.dense_macs and plan.predicted_ms is None and plan.budget["ms"] == pytest.approx(2.0)
    pruned = pipeline.prune(analysis, plan)
    assert sum(p.numel() for p in pruned.model.parameters()) == sum(p.numel() for p in analysis.model.parameters())


class Takes(nn.Module):
    """A network that runs only on images of one size (flatten -> linear), so a wrong input shape fails."""

    def __init__(self, size: int, out: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, out)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize("backend", ["torch-cpu", "ort-cpu"])
def test_networks_of_different_input_sizes_are_timed_in_the_same_rounds(backend):
    rule = RoundsRule(min_rounds=3, max_rounds=3, max_seconds=5.0)
    timing, _ = measure_paired(Takes(16).eval(), [Takes(8).eval(), Takes(12).eval()], (1, 3, 16, 16), backend,
                               rule=rule, runs=3, global_warmup_s=0.0, warn=False,
                               input_shapes=[(1, 3, 8, 8), (1, 3, 12, 12)])
    assert len(timing.ratios) == 2 and all(r.ratio > 0 for r in timing.ratios)
    assert [len(m.rounds) for m in timing.networks] == [3, 3] and len(timing.reference.rounds) == 3
    with pytest.raises(ValueError, match="2 models but 1 input shapes"):
        measure_paired(Takes(16).eval(), [Takes(8).eval(), Takes(12).eval()], (1, 3, 16, 16), backend,
                       input_shapes=[(1, 3, 8, 8)])
    with pytest.raises(Exception):  # the reference's shape for every network: the smaller ones cannot run it
        measure_paired(Takes(16).eval(), [Takes(8).eval()], (1, 3, 16, 16), backend, rule=rule, runs=3,
                       global_warmup_s=0.0, warn=False)


def test_the_closed_loop_timer_times_plans_against_a_reference_at_its_own_input_size(profiled):
    from latprune import pipeline
    from latprune.profiler.variant_timer import VariantTimer

    p, rule = profiled, RoundsRule(min_rounds=3, max_rounds=3)
    full = {g.id: g.width for g in p.analysis.groups}
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=rule, settings=p.timing) as timer:
        own = timer.time(full)
    reference = pipeline.load("cifar:resnet20", input_shape=(1, 3, 64, 64))  # the model at a larger input size
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=rule, settings=p.timing, reference=reference) as timer:
        against = timer.time(full)
    assert own.variant.median_ms == pytest.approx(own.dense.median_ms)  # full widths: the dense network itself
    assert against.variant.median_ms == pytest.approx(own.variant.median_ms)
    assert against.dense.median_ms > 3 * own.dense.median_ms  # four times the pixels through every layer
