"""`digit-data`: make (synth), convert (SVHN format 1) and inspect (stats) HW2-layout data sets.

Data goes to stdout, progress and warnings to stderr. A user's mistake prints `error: <message>`
and exits 1; click's usage errors exit 2.
"""

from __future__ import annotations

import json
import sys

import click

from digit_reader.runtime.command import Group
from digit_reader.runtime.console import err


@click.group(cls=Group)
def main():
    """Make, convert and inspect house-number data sets in the HW2 layout.

    HW2 layout: ROOT/{train,valid,test}/N.png and ROOT/{split}.json (COCO, bbox = [x, y, w, h]
    in pixels, category_id = digit + 1).
    """


def _print_stats(root, as_json: bool = False, verify: bool = False) -> None:
    from digit_reader.train.data.stats import dataset_stats, format_stats

    stats = dataset_stats(root, verify_images=verify, log=err)
    click.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@main.command()
@click.option("--out", "-o", "out", required=True, type=click.Path(), help="output ROOT")
@click.option("--train", "n_train", default=0, show_default=True, type=click.IntRange(0))
@click.option("--valid", "n_valid", default=0, show_default=True, type=click.IntRange(0))
@click.option("--test", "n_test", default=0, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--difficulty",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 2),
    help="0 = clean plates, 1 = SVHN-like, 2 = harder",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1))
@click.option("--overwrite", is_flag=True, help="replace splits that already exist in ROOT")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def synth(out, n_train, n_valid, n_test, seed, difficulty, workers, overwrite, as_json):
    """Synthesize SVHN-like house numbers (deterministic by seed) into ROOT, then summarize."""
    from digit_reader.train.data.synth import synthesize

    counts = {s: n for s, n in (("train", n_train), ("valid", n_valid), ("test", n_test)) if n}
    if not counts:
        raise click.UsageError("nothing to make: give --train, --valid and/or --test counts")
    with _Progress(sum(counts.values()), "synth") as bar:
        synthesize(
            out,
            counts,
            seed,
            lambda done: bar.update(done - bar.n),
            difficulty=difficulty,
            workers=workers,
            overwrite=overwrite,
        )
    _print_stats(out, as_json)


@main.group()
def convert():
    """Convert a public data set into the HW2 layout."""


@convert.command("svhn")
@click.argument("src", type=click.Path())
@click.option("--out", "-o", "out", required=True, type=click.Path(), help="output ROOT")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--valid-fraction",
    default=3340 / 33402,
    show_default="3340/33402, HW2's split",
    type=click.FloatRange(0, 1, max_open=True),
    help="share of SVHN train (+extra) that becomes valid",
)
@click.option("--overwrite", is_flag=True, help="replace splits that already exist in ROOT")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def convert_svhn_cmd(src, out, seed, valid_fraction, overwrite, as_json):
    """SVHN format 1 (SRC holds the extracted train/, test/ and optionally extra/, each with its
    digitStruct.mat) into ROOT: train (+extra) split into train/valid by seed, test kept as test
    with its test.json. Images are hard-linked when possible, else copied.
    """
    from digit_reader.train.data.svhn_mat import convert_svhn

    report = convert_svhn(src, out, seed, valid_fraction, overwrite=overwrite, log=err)
    for line in report.lines():
        err(line)
    err(f"images: {report.linked} hard-linked, {report.copied} copied")
    _print_stats(out, as_json)


@main.command()
@click.argument("root", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--verify", is_flag=True, help="also decode every image and check its size")
def stats(root, as_json, verify):
    """Digit-count, box-size and image-size distributions of ROOT, per split, beside real SVHN."""
    _print_stats(root, as_json, verify)


class _Progress:
    """tqdm on stderr when available; a no-op counter otherwise."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm(total=total, desc=desc, unit="img", file=sys.stderr) if tqdm else None
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k
        if self._tqdm is not None:
            self._tqdm.update(k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._tqdm is not None:
            self._tqdm.close()


if __name__ == "__main__":
    main()
