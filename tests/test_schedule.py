"""The LR schedule and the --time-limit plan, with scripted epoch durations (no test reads the wall clock)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import resnetlab
from resnetlab.training.schedule import Schedule, TimePlan, plan_epochs

TINY = {"img_size": 16, "width": 0.25, "batch_size": 16, "progress": False, "workers": 1, "lr": 0.05,
        "device": "cpu", "amp": "off", "recipe": "plain"}  # the schedule's mechanics, not auto's choices


class ScriptedClock:
    """clock() returns 0, then advances by the next scripted duration on every later call."""

    def __init__(self, durations):
        self.durations, self.now, self.calls = iter(durations), 0.0, 0

    def __call__(self) -> float:
        if self.calls:
            self.now += next(self.durations)
        self.calls += 1
        return self.now


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
def test_schedules_end_at_zero_whatever_total_and_warmup(kind):
    for total, warmup in [(1, 1), (2, 5), (10, 3), (40, 40), (100, 25)]:
        schedule = Schedule(kind, total, warmup, steps_per_epoch=max(1, total // 4), step_size=30)
        assert schedule(total) == pytest.approx(0.0, abs=1e-12)
        assert max(schedule(s) for s in range(total + 1)) <= 1.0


def test_onecycle_rises_then_falls_and_stretches_with_its_total():
    schedule = Schedule("onecycle", 100, 25, 10, 30)
    values = [schedule(s) for s in range(101)]
    assert values[0] == pytest.approx(0.04) and values[25] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:25], values[1:26]))  # warm-up rises
    assert all(a >= b for a, b in zip(values[25:], values[26:]))  # then falls to 0
    schedule.total_steps = 60  # --time-limit shortened the run: it now ends at step 60
    assert schedule(60) == pytest.approx(0.0) and schedule(40) > 0.1
    schedule.total_steps = 20  # shorter than its warm-up: the warm-up takes at most half of the run
    assert schedule(10) == pytest.approx(1.0) and schedule(20) == pytest.approx(0.0)


def test_step_and_constant_schedules():
    step = Schedule("step", 100, 0, steps_per_epoch=10, step_size=3)
    assert [step(s) for s in (0, 29, 30, 60)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    constant = Schedule("none", 100, 4, 10, 30)
    assert [constant(s) for s in (0, 3, 50)] == pytest.approx([0.25, 1.0, 1.0])


def test_plan_shortens_lengthens_and_never_ends_an_unfinished_schedule():
    # 10 s epochs, 100 s budget, 20 s used after epoch 2: 8 more fit
    assert plan_epochs(100, 20, [10, 10], 2, 50) == 10
    assert plan_epochs(100, 20, [10, 10], 2, 5) == 5  # never longer than planned...
    assert plan_epochs(100, 20, [10, 10], 2, 5, lengthen=True) == 10  # ...unless asked to fill the time
    # out of time mid-plan: one more epoch still runs, so the schedule reaches its end
    assert plan_epochs(100, 99, [30, 30], 3, 10) == 4
    assert plan_epochs(100, 250, [30, 30], 3, 10) == 4
    # the planned last epoch has run: the plan is final, even with time left and --fill-time
    assert plan_epochs(100, 30, [10], 3, 3, lengthen=True) == 3


def test_time_plan_from_a_scripted_clock_with_a_slow_last_epoch():
    # start, loop start, then epochs of 10 s, 10 s, 10 s and a last one 3x slower
    clock = ScriptedClock([5.0, 10.0, 10.0, 10.0, 30.0])
    plan = TimePlan(60.0, clock)
    plan.start_loop()
    planned = 100
    planned = plan.after_epoch(1, planned)  # 15 s used, 10 s epochs: 4 more fit -> 5
    assert planned == 5
    planned = plan.after_epoch(2, planned)  # 25 s used: 3 more -> 5
    assert planned == 5
    planned = plan.after_epoch(3, planned)  # 35 s used: 2 more -> 5
    assert planned == 5
    planned = plan.after_epoch(4, planned)  # 65 s used (epoch 4 took 30 s): over, but epoch 5 ends the schedule
    assert planned == 5


def test_time_limited_run_ends_with_its_schedule_annealed(split_folders: Path, tmp_path: Path, capsys):
    """The flaky case: the plan shrinks after epochs have run; the last epoch that runs still ends at LR 0."""
    # data preparation 2 s, then 1 s epochs except a 3x slower one at epoch 4
    clock = ScriptedClock(itertools.chain([2.0, 1.0, 1.0, 1.0, 3.0], itertools.repeat(1.0)))
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "short"), epochs=50, time_limit="8s",
                             clock=clock, **TINY)
    assert result.stopped is None
    lrs = [row["lr"] for row in result.history]
    # after epoch 1 (3 s used): 5 more fit -> 6; after epoch 4 (8 s used): one more epoch finishes the plan -> 5
    assert result.epochs_done == 5
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and max(lrs) > 0.5 * TINY["lr"]
    out = capsys.readouterr().err
    assert "time limit: the run is shortened to 6 epochs" in out
    assert "time limit: the run is shortened to 5 epochs" in out


def test_fill_time_lengthens_and_anneals_at_the_new_end(split_folders: Path, tmp_path: Path, capsys):
    clock = ScriptedClock(itertools.repeat(1.0))  # every epoch 1 s, 1 s of setup
    result = resnetlab.train(data=str(split_folders), out=str(tmp_path / "fill"), epochs=2, time_limit="7s",
                             fill_time=True, clock=clock, **TINY)
    # after epoch 1: 2 s used (setup and epoch 1), 5 s left -> 5 more epochs -> 6
    assert result.epochs_done == 6 and "time limit: the run is lengthened to 6 epochs" in capsys.readouterr().err
    lrs = [row["lr"] for row in result.history]
    assert lrs[1] > 0.5 * TINY["lr"] and lrs[-1] == pytest.approx(0.0, abs=1e-9)
