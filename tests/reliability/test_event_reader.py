"""Promise: `lora3d watch`, the dashboard and the headless display read any events.jsonl without a traceback, in
bounded memory: fields of the wrong type read as missing, over-nested and over-long lines are skipped (and
said), a folder named events.jsonl is a clear error (exit 2). Plus: `output.dir: ''` never trains into the
current folder."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
import yaml
from rich.console import Console

from engine.cli import main as cli_main
from engine.train.display import HeadlessDisplay
from engine.train.event_types import StartEvent, StepEvent, parse_event
from engine.train.events import MAX_LINE_BYTES, EventTail, read_events
from engine.train.run_state import LINE_CHARS, RunState, event_line
from engine.train.watch import watch_plain
from tests.conftest import toy_profile_dict

HOSTILE = [
    {"type": "start", "time": "now", "name": ["x"], "total_steps": "ten", "params": [1, 2], "pid": "me",
     "micro_batch": 2.5, "effective_batch": {"a": 1}},
    {"type": "step", "step": "1", "loss": [0.5], "lr": {"x": 1}, "memory_bytes": "big", "epoch": None},
    {"type": "step", "step": 2.0, "loss": "nan", "lr": True, "samples_per_s": "fast"},
    {"type": "eval", "step": 2, "metrics": "good", "primary": 7, "best": "0.1", "improved": "yes"},
    {"type": "eval", "step": 3, "metrics": {"miou": "0.4", "acc": 0.9, "bad": [1]}, "primary": "acc", "best": 0.9},
    {"type": "checkpoint", "step": [3], "path": {"p": 1}, "reason": None},
    {"type": "warning", "message": {"text": "x"}, "step": "3"},
    {"type": "oom", "micro_batch": "half"},
    {"type": "error", "message": 42, "kind": ["E"]},
    {"type": 5, "step": 1},
    {"type": "end", "status": ["completed"], "step": "4", "adapter": 3, "partial": "no"},
]


def _write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def test_typed_events_drop_fields_of_the_wrong_type():
    start = parse_event(HOSTILE[0])
    assert isinstance(start, StartEvent) and start.time is None and start.name is None and start.params is None
    assert start.micro_batch is None and set(start.dropped) == {"name", "total_steps", "params", "pid", "micro_batch",
                                                               "effective_batch"}
    step = parse_event(HOSTILE[2])
    assert isinstance(step, StepEvent) and step.step == 2 and step.lr is None and str(step.loss) == "nan"
    assert parse_event(HOSTILE[4]).metrics == {"acc": 0.9}  # a number as text and a list are not numbers
    assert parse_event(HOSTILE[9]) is None  # `type` must be a string


def test_run_state_display_and_watch_survive_wrong_types(tmp_path):
    run = tmp_path / "run"
    _write_lines(run / "events.jsonl", HOSTILE)
    state = RunState()
    state.apply(read_events(run / "events.jsonl"))
    assert state.status == "failed" and state.step == 2 and state.losses == []
    assert state.total_steps is None and state.eval_values == [0.9] and state.best == 0.9
    assert all(isinstance(v, (int, float)) for v in state.last_step.values() if not isinstance(v, str))
    out = io.StringIO()
    watch_plain(run, out, follow_run=False)
    text = out.getvalue()
    assert "error: None" in text and "step 2" in text
    display = HeadlessDisplay(console=Console(file=io.StringIO(), force_terminal=False))
    for event in HOSTILE:
        display(event)  # the trainer's listener path: dicts as written
    display.close()


@pytest.mark.parametrize("depth", [100_000])
def test_deeply_nested_json_is_skipped(tmp_path, depth):
    run = tmp_path / "run"
    deep = '{"type": "step", "x": ' + "[" * depth + "]" * depth + "}"
    _write_lines(run / "events.jsonl", [{"type": "start", "name": "r"}, deep, {"type": "end", "status": "completed",
                                                                              "step": 0}])
    assert [e["type"] for e in read_events(run / "events.jsonl")] == ["start", "end"]
    out = io.StringIO()
    assert watch_plain(run, out, follow_run=False).status == "completed"


def test_events_jsonl_as_a_folder_is_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "events.jsonl").mkdir(parents=True)
    assert cli_main(["watch", str(run), "--plain"]) == 2
    err = capsys.readouterr().err
    assert "events.jsonl: is a folder, not an event log" in err and "Traceback" not in err


def test_events_jsonl_as_a_folder_is_refused_before_the_dashboard_opens(tmp_path, capsys, monkeypatch):
    import wizard.app
    import wizard.commands

    run = tmp_path / "run"
    (run / "events.jsonl").mkdir(parents=True)
    monkeypatch.setattr(wizard.commands, "_is_tty", lambda: True)
    monkeypatch.setattr(wizard.app, "make_app", lambda **kw: pytest.fail("the dashboard opened on a bad event log"))
    assert cli_main(["watch", str(run)]) == 2
    assert "events.jsonl: is a folder, not an event log" in capsys.readouterr().err


@pytest.mark.parametrize("size_mb", [12, pytest.param(200, marks=pytest.mark.slow)])
def test_an_over_long_line_is_skipped_in_bounded_memory(tmp_path, size_mb):
    """A 200 MB event line used to be read whole and printed whole."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "events.jsonl", "w") as f:
        f.write(json.dumps({"type": "start", "name": "r", "total_steps": 1}) + "\n")
        f.write('{"type": "warning", "message": "')
        chunk = "x" * (1024 * 1024)
        for _ in range(size_mb):
            f.write(chunk)
        f.write('"}\n')
        f.write(json.dumps({"type": "end", "status": "completed", "step": 1}) + "\n")
    out = io.StringIO()
    tracemalloc.start()
    try:
        state = watch_plain(run, out, follow_run=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert state.status == "completed"
    assert peak < 3 * MAX_LINE_BYTES, peak  # never the whole line: one chunk plus at most one limit's worth
    lines = out.getvalue().splitlines()
    assert any("skipped 1 event line(s) longer than 4 MB" in line for line in lines)
    assert max(len(line) for line in lines) < 1000
    tail = EventTail(run / "events.jsonl", max_bytes=2 * 1024 * 1024)
    seen = []
    while True:
        seen += tail.poll()
        if tail.at_end:
            break
    assert [e["type"] for e in seen] == ["start", "end"] and tail.skipped_lines == 1


def test_a_long_message_under_the_limit_is_cut_when_printed(tmp_path):
    event = {"type": "warning", "message": "y" * 100_000}
    line = event_line(event, RunState())
    assert len(line) < LINE_CHARS + 100 and line.endswith("more characters)")


def test_empty_output_dir_never_trains_into_the_current_folder(tmp_path, monkeypatch, capsys):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    data = toy_profile_dict(tmp_path)
    data["output"]["dir"] = ""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cli_main(["train", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`output.dir` is empty" in err and "Traceback" not in err
    assert list(work.iterdir()) == []


def test_check_event_log_refuses_a_folder_before_following(tmp_path):
    from engine.errors import CheckpointError
    from engine.train.events import check_event_log

    check_event_log(tmp_path / "events.jsonl")  # not there yet: fine, a run may still be starting
    (tmp_path / "events.jsonl").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        check_event_log(tmp_path / "events.jsonl")
