"""Tests commands several families declare (`eval`, `predict`): one `lora3d` command, run by the run's family."""

from __future__ import annotations

import argparse

import pytest
import yaml

from engine.cli import build_parser, main
from engine.families import registry
from engine.families.base import Family
from engine.families.entry import CliCommand

CALLS: list[dict] = []


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--flag")


def run_echo(args: argparse.Namespace) -> int:
    CALLS.append(vars(args))
    return 0


class EchoFamily(Family):
    name = "echo"
    label = "Echo: a family that declares `eval` too"
    tasks = ("t",)
    default_task = "t"
    commands = (CliCommand("eval", "echo's eval", _arguments, f"{__name__}:run_echo"),)


@pytest.fixture
def echo_family():
    registry.register_family(EchoFamily)
    CALLS.clear()
    yield
    registry._PLUGINS.pop("echo", None)
    registry._INSTANCES.pop("echo", None)


def _run_dir(tmp_path, family: str):
    run = tmp_path / family
    run.mkdir()
    (run / "profile.resolved.yaml").write_text(yaml.safe_dump({"schema_version": 1, "model": {"family": family}}))
    return run


def test_a_command_two_families_declare_goes_to_the_family_of_the_run(echo_family, tmp_path):
    help_text = build_parser().format_help()
    assert "eval" in help_text
    assert main(["eval", str(_run_dir(tmp_path, "echo")), "--flag", "x"]) == 0
    assert [{"run_dir": str(tmp_path / "echo"), "flag": "x"}] == CALLS


def test_the_other_family_parses_its_own_options(echo_family, tmp_path, capsys):
    run = _run_dir(tmp_path, "scenesplat")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run), "--flag", "x"])  # echo's option, not scenesplat's
    assert exit_info.value.code == 2
    assert "lora3d eval" in capsys.readouterr().err and not CALLS


def test_a_family_without_the_command_exits_2(echo_family, tmp_path, capsys):
    assert main(["eval", str(_run_dir(tmp_path, "toy"))]) == 2
    err = capsys.readouterr().err
    assert "not available for the toy family" in err and "echo" in err and "scenesplat" in err
