"""Every CLI fails one way: a UserError is `error: <message>` on stderr with its exit code."""

import importlib
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from digit_reader.runtime.command import Command, Group
from digit_reader.runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@click.group(cls=Group)
def tool():
    """A group like digit-data, with a nested group like `digit-data convert`."""


@tool.group()
def sub():
    pass


@sub.command()
@click.option("--code", default=1)
def fail(code):
    raise UserError("data/x.json: broken", code=code)


@pytest.mark.parametrize("code", [1, 2])
def test_user_error_in_a_nested_command_is_one_line_and_its_code(code):
    result = CliRunner().invoke(tool, ["sub", "fail", "--code", str(code)])
    assert result.exit_code == code
    assert result.stderr == "error: data/x.json: broken\n"
    assert result.stdout == ""


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_uses_the_one_way_to_fail(script):
    module, name = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), name)
    assert isinstance(main, (Command, Group)), f"{script} is a plain {type(main).__name__}"
    if isinstance(main, Group):
        for cmd in main.commands.values():
            assert isinstance(cmd, (Command, Group)), f"{script} {cmd.name}"
    result = CliRunner().invoke(main, ["-h"])
    assert result.exit_code == 0 and "Usage:" in result.output
