"""The recovery time box: how many optimiser steps it plans, judged on a fake clock."""

import pytest

from latprune.recovery import timebox
from latprune.recovery.timebox import StepBox


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timebox.time, "perf_counter", fake)
    return fake


def run(box: StepBox, clock: FakeClock, durations: list[float]) -> list[int]:
    """Steps of the given durations until the box says it is finished; the planned total after each."""
    totals = []
    for seconds in durations:
        if box.finished:
            break
        clock.now += seconds
        totals.append(box.step_done())
    return totals


def test_one_slow_second_step_does_not_set_the_pace(clock):
    box = StepBox(planned=100, seconds=60.0)
    totals = run(box, clock, [5.0, 6.0] + [1.0] * 200)
    assert totals[1] == 2 + 49 // 6  # judged on the slow step alone: 10
    assert totals[2] == 3 + int(48 / 3.5)  # median of 6 and 1 s
    assert totals[4] == 5 + 46  # median pace 1 s from then on: the box is used
    assert box.done == 51 and clock.now == 60.0


def test_the_total_is_settled_after_the_judged_steps(clock):
    box = StepBox(planned=100, seconds=30.0)
    run(box, clock, [1.0] * StepBox.JUDGED_STEPS)
    settled = box.total
    assert settled == StepBox.JUDGED_STEPS + 25
    clock.now += 10.0  # a slow step later does not re-plan
    assert box.step_done() == settled


def test_never_more_than_planned_and_a_first_step_filling_the_box_ends_it(clock):
    box = StepBox(planned=8, seconds=1000.0)
    assert run(box, clock, [1.0] * 20) == [8] * 8
    full = StepBox(planned=8, seconds=5.0)
    assert run(full, clock, [6.0, 1.0]) == [1] and full.finished


def test_without_a_box_every_step_runs(clock):
    box = StepBox(planned=7, seconds=None)
    assert run(box, clock, [100.0] * 10) == [7] * 7
