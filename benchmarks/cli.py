"""`digit-bench parity|latency` (issue 6): not built yet."""

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Parity and latency benchmarks of exported models (not built yet)."""


@main.command()
def parity():
    """Accuracy parity of every exported form against PyTorch (not built yet)."""
    click.echo("digit-bench parity: not built yet (issue 6)", err=True)
    sys.exit(2)


@main.command()
def latency():
    """Latency of every backend, precision and batch (not built yet)."""
    click.echo("digit-bench latency: not built yet (issue 6)", err=True)
    sys.exit(2)
