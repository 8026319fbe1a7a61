"""Every `cmpo` command has a working --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cmpo.cli import COMMANDS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cmpo.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    for name in COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help(command):
    res = run_cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: cmpo " + command in res.stdout
