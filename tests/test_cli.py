"""The command line: help everywhere, exit codes scripts can rely on."""

from __future__ import annotations

import argparse

import pytest

from batos.cli import build_parser, decode_source, parse_arg

from conftest import free_port, run_cli

def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, as argument tuples."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += commands(sub, (*prefix, name))
    return found


def test_every_command_has_help(capsys):
    top = run_cli("--help")
    assert top.returncode == 0
    every = commands(build_parser())
    assert len(every) > 20
    for command in every:
        if len(command) == 1:
            assert command[0] in top.stdout
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*command, "--help"])
        assert done.value.code == 0
        assert "usage: batos " + " ".join(command) in capsys.readouterr().out, command


def test_usage_errors_exit_2():
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("get", "genesis_obj").returncode == 2
    bad_kw = run_cli("send", "genesis_obj", "x", "--kw", "not an identifier=1")
    assert bad_kw.returncode == 2 and "--kw" in bad_kw.stderr
    both = run_cli("define", "genesis_obj", "f", "def f(self): pass", "--file", "x.py")
    assert both.returncode == 2


def test_no_server_exits_5_with_a_hint():
    done = run_cli("ping", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert done.returncode == 5 and "batos run" in done.stderr


def test_missing_image_for_doctor_exits_4(tmp_path):
    done = run_cli("doctor", "--image", str(tmp_path / "none.fs"))
    assert done.returncode == 4 and "no image" in done.stderr


def test_bad_setting_from_environment_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "batos", "run", "--image", str(tmp_path / "i.fs")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BATOS_WORKERS": "many"})
    assert done.returncode == 2 and "BATOS_WORKERS" in done.stderr
    assert not (tmp_path / "i.fs").exists()


def test_keys_prints_a_usable_pair():
    done = run_cli("keys")
    assert done.returncode == 0
    assert "BATOS_CURVE_SECRET_KEY=" in done.stdout and "BATOS_CURVE_SERVER_KEY=" in done.stdout


@pytest.mark.parametrize("text, value", [("1", 1), ("true", True), ('"1"', "1"), ("hello", "hello"),
                                          ("[1, 2]", [1, 2]), ("{oops", "{oops"), ("", "")])
def test_args_are_json_literals_or_strings(text, value):
    assert parse_arg(text) == value


def test_source_escapes():
    assert decode_source(r"def f(self):\n    return 1") == "def f(self):\n    return 1"
    real = "def f(self):\n    return '\\n'"
    assert decode_source(real) == real


def test_parser_builds():
    assert build_parser().parse_args(["send", "genesis_obj", "x", "1"]).args == ["1"]
