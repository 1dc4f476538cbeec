"""Runs a CLI command in-process the way `python -m engine` would, and checks a clean failure."""

from __future__ import annotations

import traceback

from engine.cli import main as cli_main


def run_cli_full(argv: list[str], capsys) -> tuple[int | None, str, str]:
    """(exit code, stderr, stdout); an exception escaping main() is what a real process prints as a
    traceback, so it comes back as code None with the traceback text in stderr."""
    capsys.readouterr()
    try:
        code = cli_main(argv)
    except BaseException:
        captured = capsys.readouterr()
        return None, captured.err + traceback.format_exc(), captured.out
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def run_cli(argv: list[str], capsys) -> tuple[int | None, str]:
    """(exit code, stderr) of run_cli_full."""
    return run_cli_full(argv, capsys)[:2]


def assert_one_message(code: int | None, err: str, needles: tuple[str, ...], exit_code: int = 2) -> None:
    """Exit `exit_code`, no traceback, exactly one `error:` message containing every needle."""
    assert "Traceback" not in err, err
    assert code == exit_code, err
    assert err.count("error:") == 1, err
    flat = " ".join(err.split())  # rich may wrap long paths in a narrow terminal
    for needle in needles:
        assert " ".join(needle.split()) in flat, f"{needle!r} not in {err!r}"
