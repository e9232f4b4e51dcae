"""One convention for every sub-command: the config is -c/--config (default
/etc/fieldgate/fieldgate.yaml), options work after the sub-command too, --version, and the exit
codes are in --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import run_fieldgate


def test_version():
    result = run_fieldgate("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("fieldgate 0.")


@pytest.mark.parametrize(
    "args",
    [
        ("check", "-c", "examples/demo.yaml"),
        ("check", "examples/demo.yaml"),
        ("check", "--config", "examples/demo.yaml", "-v"),
        ("-v", "check", "-c", "examples/demo.yaml"),
    ],
)
def test_check_takes_the_config_as_every_command_does(args):
    result = run_fieldgate(*args)
    assert result.returncode == 0, result.stderr
    assert "examples/demo.yaml: OK (3 bus(es), 4 device(s))" in result.stdout


@pytest.mark.parametrize("command", ["run", "check", "read"])
def test_the_default_config_is_the_installed_one(command):
    if Path("/etc/fieldgate/fieldgate.yaml").exists():
        pytest.skip("fieldgate is installed on this machine: its config would be read")
    args = [command, "main-meter"] if command == "read" else [command]
    result = run_fieldgate(*args)
    # No config at the default place: the command names the file it looked for.
    assert result.returncode == 78
    assert "/etc/fieldgate/fieldgate.yaml: cannot read the config file" in result.stderr


def test_help_lists_the_exit_codes():
    for args in (("--help",), ("run", "--help"), ("check", "--help")):
        result = run_fieldgate(*args)
        assert result.returncode == 0
        assert "exit codes:" in result.stdout
        assert "78  the config file is not valid" in result.stdout


def test_a_wrong_command_line_says_so_with_2():
    result = run_fieldgate("run", "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
