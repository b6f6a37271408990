"""The `ferpipe` console script declared in pyproject.toml."""

import importlib
import subprocess
import sys
from pathlib import Path

from ferpipe import cli


def test_every_command_is_a_module_with_main():
    for name, module in cli.COMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_unknown_command_is_named(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs_a_stage_help():
    exe = Path(sys.executable).with_name("ferpipe")
    out = subprocess.run([str(exe), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--face-crop" in out.stdout
