"""`latprune run --input-size auto`: the largest size whose dense network alone meets the budget or comes within 5%
of it, else the smallest tried."""

import pytest

from latprune.budget import BudgetRequest
from latprune.network import PairedRatio
from latprune.size_choice import NEAR, choose_size, needed_ratio

# EfficientNet-Lite0's dense ratios on ort-cpu (`latprune sizes`, docs/planning.md)
LITE0 = {216: 0.955, 208: 0.916, 200: 0.883, 192: 0.746, 184: 0.711, 176: 0.665, 168: 0.651, 160: 0.547}


def readings(ratios: dict[int, float]) -> list[tuple[int, PairedRatio]]:
    return [(size, PairedRatio(r, r - 0.01, r + 0.01, 20)) for size, r in ratios.items()]


def test_the_largest_size_whose_dense_network_alone_meets_the_budget_is_taken():
    choice = choose_size(readings(LITE0), 1 / 1.25)
    assert choice.size == 192 and choice.ratio.ratio == 0.746
    assert choice.reason == "the largest size whose dense network alone meets the budget"
    assert choose_size(readings(LITE0), 1 / 1.5).size == 176  # 0.665 <= 0.667
    assert choose_size(readings(LITE0), 0.746).size == 192  # exactly at the budget


def test_a_size_within_five_percent_of_the_budget_is_taken_before_a_smaller_one_that_meets_it():
    slower = {**LITE0, 176: 0.676}  # as measured on another host: 1.4% over 1.5x
    choice = choose_size(readings(slower), 1 / 1.5)
    assert choice.size == 176 and "comes within 5% of the budget (widths give the rest)" in choice.reason
    assert choose_size(readings({**LITE0, 176: 0.705}), 1 / 1.5).size == 168  # 5.75% over: the next one meets
    assert NEAR == 0.05


def test_where_no_size_comes_near_the_budget_the_smallest_is_taken():
    choice = choose_size(readings(LITE0), 1 / 2)  # 160: 0.547, 9% over 0.5
    assert choice.size == 160 and choice.reason.startswith("the smallest size tried: none comes within 5%")


def test_candidates_are_read_largest_first_whatever_their_order():
    shuffled = dict(sorted(LITE0.items()))  # smallest first
    choice = choose_size(readings(shuffled), 1 / 1.25)
    assert choice.size == 192 and [size for size, _ in choice.candidates] == sorted(LITE0, reverse=True)
    with pytest.raises(ValueError, match="no candidate size"):
        choose_size([], 0.5)


def test_the_ratio_asked_for_is_what_the_result_is_judged_by_for_either_kind_of_budget():
    assert needed_ratio(BudgetRequest(speedup=1.5), 4.0) == pytest.approx(1 / 1.5)
    assert needed_ratio(BudgetRequest(speedup=1.5, margin=0.02), 4.0) == pytest.approx(1 / 1.5)  # the widths' aim
    assert needed_ratio(BudgetRequest(budget_ms=3.0), 4.0) == pytest.approx(0.75)


def test_the_choice_says_what_it_chose_from():
    choice = choose_size(readings({200: 0.883, 192: 0.746}), 0.8)
    assert choice.describe() == ("--input-size auto chose 192, the largest size whose dense network alone meets the "
                                 "budget (the budget asks for 0.800 of the dense network at its own size; the dense "
                                 "network at each size tried, paired: 200: 0.883, 192: 0.746)")
    data = choice.to_json()
    assert data["size"] == 192 and data["near"] == NEAR and data["needed_ratio"] == 0.8
    assert [c["size"] for c in data["candidates"]] == [200, 192] and data["candidates"][1]["ratio"]["ratio"] == 0.746
