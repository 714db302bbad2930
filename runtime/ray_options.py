"""digit-read's --ray options, and telling `--ray ADDRESS` from `--ray IMAGES/`."""

from __future__ import annotations

import re

import click

LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+)$")


def options(command):
    """digit-read's --ray options (applied in runtime/cli.py)."""
    for option in reversed(
        [
            click.option(
                "--ray",
                "ray_address",
                is_flag=False,
                flag_value=LOCAL,
                default=None,
                metavar="[ADDRESS]",
                help="read on Ray Data: alone, a local Ray instance; with ADDRESS (auto, "
                "HOST:PORT, ray://HOST:PORT) join that cluster. Needs the [ray] extra",
            ),
            click.option(
                "--actors",
                type=click.IntRange(1),
                help="with --ray: model actors [one per 2 CPUs, or one per GPU with cuda]",
            ),
            click.option(
                "--cpus",
                type=click.FloatRange(0.5),
                help="with --ray alone: CPUs the local Ray instance may use [all]",
            ),
            click.option(
                "--out",
                "out_dir",
                type=click.Path(file_okay=False),
                help="with --ray: also write Parquet shards (image_id, path, number, boxes, "
                "scores, digits) into this directory",
            ),
        ]
    ):
        command = option(command)
    return command


def parse_options(paths: tuple[str, ...], given: dict) -> tuple[tuple[str, ...], dict | None]:
    """(paths, the --ray settings or None). `--ray imgs/` must not take imgs/ for an address:
    a value that is no address (auto, local, ray://..., HOST:PORT) is the first path."""
    address = given.get("ray_address")
    settings = {k: given.get(k) for k in ("actors", "cpus", "out_dir")}
    if address is None:
        for name, value in settings.items():
            if value is not None:
                flag = "--out" if name == "out_dir" else f"--{name}"
                raise click.UsageError(f"{flag} needs --ray")
        return paths, None
    if not _ADDRESS.match(address):
        paths, address = (address, *paths), LOCAL
    if settings["cpus"] is not None and address != LOCAL:
        raise click.UsageError("--cpus sizes a local Ray instance; a cluster has its own CPUs")
    return paths, {"address": address, **settings}
