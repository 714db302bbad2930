"""The one way every digit-reader CLI fails: a UserError becomes `error: <message>` on stderr
and its exit code (1 bad input, 2 usage), never a traceback.

Use `@click.command(cls=Command)` or `@click.group(cls=Group)`; both also accept -h.
"""

from __future__ import annotations

import click

from digit_reader.runtime.contract import DEFAULT_DEVICE, DEVICE_HELP, check_device
from digit_reader.runtime.errors import UserError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def report(e: UserError) -> int:
    """Print a UserError as the CLIs do and return its exit code."""
    click.echo(f"error: {e}", err=True)
    return e.code


class _ReportsUserErrors:
    """Mixed into click's Command and Group: -h works, a UserError ends with one line."""

    def __init__(self, *args, **kwargs):
        kwargs["context_settings"] = {**CONTEXT_SETTINGS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            ctx.exit(report(e))


class Command(_ReportsUserErrors, click.Command):
    """A click command whose UserErrors end the program with one line and their exit code."""


class Group(_ReportsUserErrors, click.Group):
    """A click group whose subcommands and subgroups report UserErrors the same way."""

    command_class = Command
    group_class = type  # subgroups are Groups too


def positive_ints(ctx, param, value: str) -> list[int]:
    """click callback: a comma-separated list of positive integers ("1,8,32"), as given."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"a comma-separated list of positive integers, not {value!r}"
        ) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"a comma-separated list of positive integers, not {value!r}")
    return out


def device_option(what: str):
    """Every CLI's --device: the same choices, default and words (runtime.contract)."""

    def check(ctx, param, value: str) -> str:
        try:
            return check_device(value)
        except UserError:
            raise click.BadParameter(f"{DEVICE_HELP}, not {value!r}") from None

    return click.option(
        "--device",
        default=DEFAULT_DEVICE,
        show_default=True,
        callback=check,
        help=f"{what}: {DEVICE_HELP}.",
    )
