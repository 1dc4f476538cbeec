"""RunState folding, the events follower and plain event lines, from synthetic events.jsonl files."""

from __future__ import annotations

import io
import threading

import pytest

from tests.wizard.conftest import MODULES, synthetic_events, write_events
from wizard.plain import watch_plain
from wizard.run.state import RunState, format_duration
from wizard.run.tail import follow


def test_state_numbers_from_steps():
    state = RunState()
    state.apply(synthetic_events(steps=10, total=20, dt=2.0))
    assert state.status == "running"
    assert state.step == 10 and state.total_steps == 20
    assert state.loss == pytest.approx(1.1)
    assert state.seconds_per_step == pytest.approx(2.0)
    assert state.eta_seconds == pytest.approx(20.0)  # 10 steps left x 2 s
    assert state.num_epochs == 2 and state.epoch == 0
    assert state.eval_steps == [5] and state.eval_values == [0.25] and state.best == 0.25
    assert state.modules == MODULES
    assert state.warnings == ["step 5: loss spike (test)"]
    # the smoothed curve lags the falling raw loss but stays between its extremes
    assert state.losses[-1] < state.smoothed[-1] < state.losses[0]


def test_state_end_and_failure():
    done = RunState()
    done.apply(synthetic_events(steps=3, end="completed"))
    done.apply([{"type": "checkpoint", "step": 3, "path": "run/checkpoints/step-3", "reason": "requested"}])
    assert done.messages[-1] == ("info", "checkpoint at step 3 (requested): run/checkpoints/step-3")
    assert done.finished and done.status == "completed" and done.eta_seconds == 0.0
    failed = RunState()
    failed.apply(synthetic_events(steps=3, error="CUDA out of memory", end="failed"))
    assert failed.status == "failed" and failed.messages[-1] == ("error", "RuntimeError: CUDA out of memory")


def test_nan_loss_is_skipped_in_curves():
    state = RunState()
    events = synthetic_events(steps=2)
    events[-1]["loss"] = "nan"
    state.apply(events)
    assert state.losses == [2.0] and state.step == 2


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (65, "1m05s"), (3725, "1h02m"), (None, "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_follow_stops_at_end_event_and_holds_torn_line(tmp_path):
    path = write_events(tmp_path, synthetic_events(steps=2))
    with open(path, "a") as f:
        f.write('{"type": "step", "step": 3')  # torn: no newline yet
    seen = []
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(path, seen.append, stop.is_set), kwargs={"poll_seconds": 0.02})
    thread.start()
    try:
        with open(path, "a") as f:
            f.write(', "loss": 1.0}\n')
        write_events(tmp_path, [{"type": "end", "status": "completed", "step": 3}])
        thread.join(timeout=10)
    finally:
        stop.set()
    assert not thread.is_alive()
    events = [e for r in seen for e in r.events]
    assert [e["type"] for e in events] == ["start", "step", "step", "step", "end"]
    assert events[3]["loss"] == 1.0


def test_follow_reports_child_exit_without_end(tmp_path):
    path = write_events(tmp_path, synthetic_events(steps=1))
    seen = []
    follow(path, seen.append, lambda: False, returncode=lambda: 3, poll_seconds=0.01)
    assert seen[-1].returncode == 3 and [e["type"] for e in seen[-1].events] == ["start", "step"]


def test_watch_plain_prints_lines(tmp_path):
    write_events(tmp_path, synthetic_events(steps=2, total=4, end="completed"))
    out = io.StringIO()
    state = watch_plain(tmp_path, out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("start fake-run (scenesplat/semseg) on cpu: 4 steps")
    assert lines[1].startswith("step 1/4 loss 2 ")
    assert "ETA" in lines[2]
    assert lines[-1] == "end: completed at step 2, adapter runs/fake/adapter"
    assert state.status == "completed"
