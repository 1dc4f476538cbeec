"""Provides the Train screen: starts or reattaches to a run and shows it live from events.jsonl.

A thread worker follows the file and posts batches of events; this screen folds them into a RunState
and redraws at most `REDRAW_SECONDS` apart, so a fast run never makes the TUI compete with training.
After the end event it offers the run family's follow-up commands (`wizard.run.actions`: evaluate, predict
on a scene), run as child processes with their output in the Results tab. The Previews tab shows the
pictures of the run's `preview` events (`[` / `]` step through earlier ones).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, RichLog, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from wizard.dialogs.scene import SceneDialog
from wizard.messages import ActionFinished, ActionOutput, EventsArrived
from wizard.run.actions import RunAction, run_actions, run_family, start_action
from wizard.run.launcher import LaunchedRun, launch_run, log_tail, request
from wizard.run.state import RunState
from wizard.run.tail import follow
from wizard.widgets.lora_table import LoraTable
from wizard.widgets.loss_plot import CurvePlot
from wizard.widgets.preview import PreviewBrowser
from wizard.widgets.run_stats import RunStats

REDRAW_SECONDS = 1.0

_ADVICE = {
    "out of memory": "lower `train.batch_size` or `lora.r`, or set `train.gradient_checkpointing=true`",
    "ProfileError": "fix the profile key named above (`lora3d validate PROFILE` lists every problem)",
    "DataError": "check the data folder (`lora3d data-check PROFILE`), or set `data.on_error=skip`",
    "CheckpointError": "check `model.pretrained` points at the right base checkpoint",
    "HardwareError": "check the GPU is visible (`lora3d probe`), or set `train.device=cpu`",
    "nan": "lower `train.lr` (e.g. divide it by 10) or enable `train.max_grad_norm`",
}


def advice_for(state: RunState, log_lines: list[str]) -> str:
    """What to change after a failed run, from the error event and the log."""
    error = state.error or {}
    haystack = " ".join([str(error.get("kind", "")), str(error.get("message", "")), *log_lines[-5:]])
    for needle, advice in _ADVICE.items():
        if needle.lower() in haystack.lower():
            return advice
    return "read train.log in the run directory; rerun headless with `lora3d train PROFILE` to see everything"


class DashboardScreen(Screen):
    """The live dashboard.

    Args:
        run_dir: the run directory (events.jsonl, train.log, SAVE/STOP control files).
        profile_path: when given, a child `lora3d train` is started on it; otherwise the screen watches.
        launch: run through accelerate (`--launch`), for several GPUs.
        overrides: `KEY=VALUE` settings passed to the child as `--set` (benchmarks, smoke tests).
    """

    BINDINGS = [
        Binding("s", "save", "Save checkpoint"),
        Binding("x", "stop", "Stop"),
        Binding("d", "detach", "Detach"),
        Binding("q", "quit_finished", "Quit", show=False),
        Binding("e", "evaluate", "Evaluate"),
        Binding("p", "predict", "Predict"),
        Binding("1", "tab('curves')", "Curves", show=False),
        Binding("2", "tab('lora')", "LoRA", show=False),
        Binding("3", "tab('log')", "Log", show=False),
        Binding("4", "tab('results')", "Results", show=False),
        Binding("5", "tab('previews')", "Previews", show=False),
        Binding("left_square_bracket", "preview(-1)", "Earlier preview", show=False),
        Binding("right_square_bracket", "preview(1)", "Later preview", show=False),
    ]

    def __init__(self, run_dir: Path, profile_path: Path | None = None, launch: bool = False,
                 overrides: list[str] | None = None) -> None:
        super().__init__()
        self.overrides = list(overrides or [])
        self.run_dir = Path(run_dir)
        self.profile_path = profile_path
        self.launch = launch
        self.state = RunState()
        self.run: LaunchedRun | None = None
        self._dirty = False
        self._last_draw = 0.0
        self._messages_shown = 0
        self._failure_shown = False
        self._process_note: str | None = None
        self.log_lines: list[str] = []
        """Everything written to the Log tab, as plain text."""
        self.result_lines: list[str] = []
        """Everything written to the Results tab, as plain text."""
        self.actions: list[RunAction] = []
        """The run family's follow-up commands (known from the start event)."""
        self._actions_family: str | None = None
        self.follow_up_process: subprocess.Popen | None = None
        """The follow-up command running now, if any."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text(f"run {self.run_dir}", style="dim"), id="run-title")
        yield RunStats("waiting for the first event...", id="stats")
        with TabbedContent(initial="curves", id="tabs"):
            with TabPane("Curves 1", id="curves"):
                yield CurvePlot("loss", id="loss-plot")
                yield CurvePlot("eval", id="eval-plot")
            with TabPane("LoRA 2", id="lora"):
                yield Static("", id="lora-caption")
                yield LoraTable(id="run-lora-table")
            with TabPane("Log 3", id="log"):
                yield RichLog(id="run-log", wrap=True, markup=False)
            with TabPane("Results 4", id="results"):
                yield RichLog(id="results-log", wrap=True, markup=False)
            with TabPane("Previews 5", id="previews"):
                yield PreviewBrowser(self.run_dir, id="preview-browser")
        yield Static("", id="last-message")
        yield Footer()

    def on_mount(self) -> None:
        if self.profile_path is not None:
            self.run = launch_run(self.profile_path, self.run_dir, launch=self.launch, overrides=self.overrides)
            self._log(f"started: {' '.join(self.run.command[1:])} (pid {self.run.pid}); output in {self.run.log_path}")
        else:
            self._log(f"watching {self.run_dir / 'events.jsonl'}")
        browser = self.query_one(PreviewBrowser)
        if browser.note:
            self._log(browser.note, style="yellow")
        self.set_interval(REDRAW_SECONDS, self._redraw_if_dirty)
        self.follow_events()

    def on_unmount(self) -> None:
        process = self.follow_up_process
        if process is not None and process.poll() is None:
            process.terminate()  # a follow-up command dies with the wizard (the training run does not)

    # ------------------------------------------------------------------ worker
    @work(thread=True, exclusive=True, group="tail")
    def follow_events(self) -> None:
        worker = get_current_worker()
        run = self.run
        follow(
            self.run_dir / "events.jsonl",
            emit=lambda result: self.post_message(EventsArrived(result)),
            should_stop=lambda: worker.is_cancelled,
            returncode=run.returncode if run is not None else None,
            watch_pid=run is None,
        )

    def on_events_arrived(self, message: EventsArrived) -> None:
        result = message.result
        self.state.apply(result.events)
        self._find_actions()
        if result.returncode is not None and not self.state.finished:
            self._process_note = f"the training process exited with code {result.returncode} before its end event"
        elif result.process_gone and not self.state.finished:
            self._process_note = "the training process is gone (killed?) and wrote no end event"
        self._dirty = True
        if self.state.finished or self._process_note or time.monotonic() - self._last_draw >= REDRAW_SECONDS:
            self.redraw()

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.redraw()
        elif not self.state.start and self._process_note is None:
            self._show_waiting()

    def _show_waiting(self) -> None:
        """Before the start event: model building, data, and (first demo run) base pretraining happen here."""
        text = Text("waiting for the first event: building the model and data", style="dim")
        text.append(" (the demo's first run also pretrains its tiny base: a few minutes on a CPU)", style="dim")
        last = [line for line in log_tail(self.run_dir, 3) if line.strip()]
        if last:
            text.append(f"\nlog: {last[-1][:150]}", style="dim italic")
        self.query_one(RunStats).update(text)

    # ------------------------------------------------------------------ drawing
    @property
    def run_name(self) -> str:
        return str(self.state.start.get("name") or self.run_dir.name)

    def redraw(self) -> None:
        self._dirty = False
        self._last_draw = time.monotonic()
        state = self.state
        self.query_one(RunStats).show(state, self.run_name)
        self.query_one("#loss-plot", CurvePlot).show(state.steps, {"loss": state.losses, "smoothed": state.smoothed})
        metric = state.primary_metric or "eval"
        self.query_one("#eval-plot", CurvePlot).show(state.eval_steps, {metric: state.eval_values})
        modules = state.modules
        table = self.query_one("#run-lora-table", LoraTable)
        if modules and table.row_count != len(modules):
            table.show(modules)
        params = state.start.get("params") or {}
        if params:
            self.query_one("#lora-caption", Static).update(
                f"{len(modules)} adapted modules; trainable {params.get('trainable', 0):,} of "
                f"{params.get('total', 0):,} parameters ({100 * params.get('ratio', 0.0):.2f}%)")
        for kind, text in state.messages[self._messages_shown:]:
            self._log(f"{kind}: {text}", style={"error": "red", "warning": "yellow"}.get(kind, ""))
        self._messages_shown = len(state.messages)
        if state.messages:
            kind, text = state.messages[-1]
            self.query_one("#last-message", Static).update(
                Text(f"{kind}: {text}", style={"error": "bold red", "warning": "yellow"}.get(kind, "dim")))
        self.query_one(PreviewBrowser).update_previews(state.previews, finished=state.finished)
        self._show_end()

    def _show_end(self) -> None:
        state = self.state
        failed = state.status == "failed" or self._process_note is not None
        if state.finished and not failed:
            end = state.end or {}
            if not self._failure_shown:
                self._failure_shown = True
                if end.get("status") == "stopped":
                    note = (f"stopped at step {end.get('step')} with a checkpoint; continue with: lora3d train "
                            f"{self.run_dir / 'profile.resolved.yaml'} --out {self.run_dir} --resume")
                else:
                    note = f"run {end.get('status')} at step {end.get('step')}; adapter: {end.get('adapter')}"
                self._log(note, style="green")
                if self.adapter_ready and self.actions:
                    offered = ", ".join(f"{self._key_of(a)} {a.label}" for a in self.actions)
                    self._log(f"next: {offered} (Results tab)", style="green")
                self.refresh_bindings()
                self.query_one("#last-message", Static).update(Text(f"{note}. q quits.", style="bold green"))
            return
        if failed and not self._failure_shown:
            self._failure_shown = True
            lines = log_tail(self.run_dir)
            if self._process_note:
                self._log(self._process_note, style="bold red")
            if state.error:
                self._log(f"error: {state.error.get('message')}", style="bold red")
            self._log(f"last lines of {self.run_dir / 'train.log'}:", style="bold")
            for line in lines:
                self._log("  " + line, style="dim")
            advice = advice_for(state, lines)
            self._log(f"what to change: {advice}", style="yellow")
            self.query_one("#last-message", Static).update(Text(f"run failed: {advice}", style="bold red"))
            self.query_one(TabbedContent).active = "log"
            self.refresh_bindings()

    def _log(self, text: str, style: str = "") -> None:
        self.log_lines.append(text)
        self.query_one("#run-log", RichLog).write(Text(text, style=style))

    def _result(self, text: str, style: str = "") -> None:
        self.result_lines.append(text)
        self.query_one("#results-log", RichLog).write(Text(text, style=style))

    # ------------------------------------------------------------------ follow-up commands
    def _find_actions(self) -> None:
        """Reads the run family's follow-up commands once its family is known."""
        family = run_family(self.run_dir, self.state.start)
        if family is None or family == self._actions_family:
            return
        self._actions_family = family
        self.actions = run_actions(family)
        if self.actions:
            offered = ", ".join(f"{self._key_of(a)} {a.label} (lora3d {a.name})" for a in self.actions)
            self._result(f"after the run: {offered}; their output appears here", "dim")
        else:
            self._result(f"the {family} family offers no evaluate or predict command", "dim")
        self.refresh_bindings()

    @staticmethod
    def _key_of(action: RunAction) -> str:
        return {"eval": "e", "predict": "p"}[action.name]

    def _action(self, name: str) -> RunAction | None:
        return next((a for a in self.actions if a.name == name), None)

    @property
    def adapter_ready(self) -> bool:
        """Whether the run ended with an adapter (what `eval` and `predict` load)."""
        return bool(self.state.end and self.state.end.get("adapter"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("save", "stop"):
            return not self.state.finished  # hidden once the run has ended: nothing left to save or stop
        name = {"evaluate": "eval", "predict": "predict"}.get(action)
        if name is None:
            return True
        if self._action(name) is None or not self.adapter_ready:
            return False  # hidden: the family has no such command, or there is nothing to run it on yet
        return None if self.follow_up_running else True

    @property
    def follow_up_running(self) -> bool:
        return self.follow_up_process is not None and self.follow_up_process.poll() is None

    def action_evaluate(self) -> None:
        action = self._action("eval")
        if action is not None and self.adapter_ready and not self.follow_up_running:
            self.start_follow_up(action)

    def action_predict(self) -> None:
        action = self._action("predict")
        if action is None or not self.adapter_ready or self.follow_up_running:
            return

        def answered(answer: tuple[Path, Path] | None) -> None:
            if answer is not None:
                self.start_follow_up(action, *answer)

        self.app.push_screen(SceneDialog(action.help, self.run_dir / "predictions"), answered)

    def start_follow_up(self, action: RunAction, scene: Path | None = None, out: Path | None = None) -> None:
        """Runs the follow-up command as a child process; its output goes to the Results tab."""
        self.query_one(TabbedContent).active = "results"
        self._result(f"$ {action.command_line(self.run_dir, scene, out)}", "bold")
        width = self.query_one("#results-log", RichLog).size.width or self.app.size.width
        try:
            self.follow_up_process = start_action(action.argv(self.run_dir, scene, out), columns=width - 2)
        except OSError as exc:
            self._result(f"could not start it: {exc}", "bold red")
            return
        self.refresh_bindings()
        self.follow_action(action, self.follow_up_process)

    @work(thread=True, exclusive=True, group="action")
    def follow_action(self, action: RunAction, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.post_message(ActionOutput(action.name, [line.rstrip("\n")]))
        self.post_message(ActionFinished(action.name, process.wait()))

    def on_action_output(self, message: ActionOutput) -> None:
        for line in message.lines:
            self._result(line)

    def on_action_finished(self, message: ActionFinished) -> None:
        action = self._action(message.action)
        label = action.label if action is not None else message.action
        if message.returncode == 0:
            self._result(f"{label}: done", "bold green")
        else:
            self._result(f"{label}: failed (exit {message.returncode}); the message above says what to fix",
                         "bold red")
        self.refresh_bindings()

    # ------------------------------------------------------------------ keys
    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_preview(self, delta: int) -> None:
        """`[` / `]`: the previous or next preview picture (opens the Previews tab)."""
        self.query_one(TabbedContent).active = "previews"
        self.query_one(PreviewBrowser).move(delta)

    def action_save(self) -> None:
        if self.state.finished:
            self.notify("the run has ended", severity="warning")
            return
        request(self.run_dir, "SAVE")
        self.notify("checkpoint requested: written at the next step")

    def action_stop(self) -> None:
        if self.state.finished:
            self.notify("the run has ended", severity="warning")
            return
        request(self.run_dir, "STOP")
        self.notify("stop requested: the run checkpoints and ends at the next step")

    def action_detach(self) -> None:
        self.app.exit(("detached", self.run_dir, self.state.finished))

    def action_quit_finished(self) -> None:
        if self.state.finished or self._process_note is not None:
            self.app.exit(("finished", self.run_dir, True))
        else:
            self.notify("the run is still going: d detaches (it keeps running), x stops it", severity="warning")
