"""The command line: help lists commands, unknown commands and user errors end in one line."""

from __future__ import annotations

import subprocess
import sys

from scenezip.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_user_error_is_one_line_not_a_traceback(tmp_path):
    missing = tmp_path / "nope"
    out = subprocess.run(
        [sys.executable, "-m", "scenezip.cli", "data", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scenezip data: error:"), out.stderr
    assert str(missing) in lines[0]


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        try:
            code = main([name, "--help"])
        except SystemExit as e:  # tyro exits after printing help
            code = e.code
        assert code == 0, name
        assert "usage: scenezip " + name in capsys.readouterr().out
