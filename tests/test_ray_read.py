"""digit-read --ray (issue 13): its decisions as plain functions, then real runs on a local Ray
instance of 2 CPUs: the same pred.csv, COCO results and error lines as plain digit-read, and
every row exactly once after an actor is killed mid-run."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from digit_reader.runtime import ray_options, ray_plan, ray_stages
from digit_reader.runtime.cli import collect_inputs, main
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.ray_plan import READ_CPUS, plan
from digit_reader.runtime.ray_plan import engine_threads as ort_threads
from digit_reader.runtime.ray_results import InOrder

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAS_RAY = importlib.util.find_spec("ray") is not None and HAS_PYARROW
needs_pyarrow = pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow (the [ray] extra) missing")
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray[data] (the [ray] extra) not installed")
DEADLINE_S = 240  # one --ray run takes 10-25 s here; a hang must fail, not stall the suite


# ---------------------------------------------------------------------------- decisions


def _fits(node_cpus, p):
    """The rule: on every node the actors placed there leave READ_CPUS for a read task."""
    return sum(int((c - READ_CPUS) / p.num_cpus + 1e-9) for c in node_cpus) >= p.actors


@pytest.mark.parametrize(
    "nodes, gpus, actors, device, want",
    [
        ([2], 0, None, "cpu", (1, 1.75, 0)),  # default: one actor per 2 CPUs
        ([2], 0, 2, "cpu", (2, 0.87, 0)),  # the test machine: 2 x 0.87 + 0.25 <= 2
        ([16], 0, None, "cpu", (8, 1.96, 0)),
        ([2, 2], 0, None, "cpu", (2, 1.75, 0)),  # one per node, each node keeps 0.25
        ([2, 2], 0, 3, "cpu", (3, 0.87, 0)),  # 1.75 each would not fit 3 on two nodes
        ([8], 2, None, "cuda", (2, 1.0, 1.0)),  # one per GPU, at most one CPU each
        ([8], 1, 2, "cuda", (2, 1.0, 0.5)),  # two actors share the GPU
    ],
)
def test_plan_sizes_actors_so_a_read_task_always_fits(nodes, gpus, actors, device, want):
    p = plan(nodes, gpus, actors, device)
    assert (p.actors, p.num_cpus, p.num_gpus) == want
    assert _fits(nodes, p)


def test_plan_takes_the_largest_share_that_fits_any_layout():
    rng = random.Random(0)
    for _ in range(300):
        nodes = [rng.choice([1, 2, 3, 4, 8, 12.5, 64]) for _ in range(rng.randint(1, 4))]
        actors = rng.randint(1, 12)
        try:
            p = plan(nodes, 0, actors, "cpu")
        except UserError:
            assert sum(int((c - READ_CPUS) * 100 // 5) for c in nodes) < actors  # < 0.05 each
            continue
        assert p.actors == actors and _fits(nodes, p), (nodes, actors, p)
        bigger = ray_plan.Plan(actors, round(p.num_cpus + 0.01, 2), 0)
        assert not _fits(nodes, bigger), (nodes, actors, p)
        if len(nodes) == 1:
            assert actors * p.num_cpus + READ_CPUS <= nodes[0] + 1e-9


def test_plan_refuses_what_cannot_run():
    with pytest.raises(UserError, match="too many"):
        plan([2], 0, 40, "cpu")
    with pytest.raises(UserError, match="no GPU"):
        plan([8], 0, None, "cuda")


def test_ort_threads_match_the_granted_cpu_share():
    assert [ort_threads(c) for c in (0.25, 0.5, 0.87, 1.0, 1.75, 1.96, 3.9)] == [
        1,
        1,
        1,
        1,
        2,
        2,
        4,
    ]


def test_in_order_emits_each_index_once_in_input_order():
    order = InOrder(50)
    arrivals = list(range(50)) + [3, 17, 49]  # a retried block delivered twice
    random.Random(1).shuffle(arrivals)
    arrivals.remove(20)  # never arrives
    out = [idx for a in arrivals for idx, _ in order.push(a, f"row{a}")]
    assert out == list(range(20))  # held back behind the gap
    rest = list(order.rest())
    assert [i for i, _ in rest] == list(range(20, 50))
    assert [r for i, r in rest if r is None] == [None] and rest[0] == (20, None)
    assert rest[1] == (21, "row21")
    assert order.duplicates == 3


@pytest.mark.parametrize(
    "args, paths, address",
    [
        (["a.png", "--ray"], ("a.png",), "local"),
        (["--ray", "imgs/", "b.png"], ("imgs/", "b.png"), "local"),  # a path, not an address
        (["--ray", "auto", "imgs/"], ("imgs/",), "auto"),
        (["--ray=ray://head:10001", "imgs/"], ("imgs/",), "ray://head:10001"),
        (["--ray", "10.0.0.5:6379", "imgs/"], ("imgs/",), "10.0.0.5:6379"),
    ],
)
def test_the_ray_option_takes_an_optional_address(args, paths, address):
    params = main.make_context("digit-read", list(args)).params  # click's parsing, no run
    got_paths, settings = ray_options.parse_options(params["paths"], params)
    assert got_paths == paths and settings["address"] == address


def test_ray_only_options_need_ray_and_uris_need_ray(tmp_path):
    for args in (["--actors", "2"], ["--out", str(tmp_path)], ["--cpus", "2"]):
        result = CliRunner().invoke(main, ["x.png", *args])
        assert result.exit_code == 2 and "needs --ray" in result.stderr, args
    result = CliRunner().invoke(main, ["x.png", "--ray", "auto", "--cpus", "2"])
    assert result.exit_code == 2 and "local Ray instance" in result.stderr
    files, failures = collect_inputs(("s3://bucket/1.png",))
    assert files == [] and failures == ["s3://bucket/1.png: a URI; only --ray reads URIs"]
    files, failures = collect_inputs(("s3://bucket/1.png",), uris=True)
    assert files == ["s3://bucket/1.png"] and failures == []


@needs_pyarrow
def test_the_read_stage_turns_each_bad_file_into_an_error_row(tmp_path):
    import pyarrow as pa

    good = tmp_path / "1.png"
    good.write_bytes(b"\x89PNG whatever")  # bytes only: decoding is the actor's job
    (tmp_path / "2.png").write_bytes(b"")
    paths = [str(good), str(tmp_path / "2.png"), str(tmp_path / "nope.png"), str(tmp_path)]
    paths.append(good.as_uri())  # file:///...: pyarrow's filesystems read URIs
    out = ray_stages.read_files(pa.table({"idx": list(range(5)), "path": paths})).to_pylist()
    assert [r["idx"] for r in out] == list(range(5))
    assert [r["data"] for r in out] == [good.read_bytes(), b"", None, None, good.read_bytes()]
    assert [r["error"] for r in out] == [
        None,
        None,  # empty: the actor says "empty file (0 bytes)", as open_rgb does for the file
        "no such file",
        "is a directory, not an image",
        None,
    ]


# --------------------------------------------------------------------- real Ray instances


def _images(src: Path, dest: Path, n: int, big: int = 0) -> Path:
    """Images 1..n of `src`; the first `big` as 8-megapixel JPEGs, slow to decode, so that the
    first block comes back after later ones and only restoring input order keeps the CSV."""
    from PIL import Image

    dest.mkdir()
    for i in range(1, n + 1):
        if i <= big:
            Image.open(src / f"{i}.png").convert("RGB").resize((4000, 2000)).save(dest / f"{i}.jpg")
        else:
            (dest / f"{i}.png").symlink_to(src / f"{i}.png")
    return dest


def _ray_read(*args) -> list[str]:
    """The digit-read command line, run in its own process as Ray needs."""
    code = "from digit_reader.runtime.cli import main; main()"
    return [sys.executable, "-c", code, *map(str, args)]


def _run(args: list[str], timeout: float = DEADLINE_S, env=None) -> subprocess.CompletedProcess:
    """Run to completion; past the deadline SIGTERM (digit-read then shuts Ray down) and fail."""
    pipe = subprocess.PIPE
    proc = subprocess.Popen(args, stdout=pipe, stderr=pipe, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"digit-read --ray did not finish in {timeout} s: {proc.stderr.read()}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _plain(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_reader_threads_cap_onnx_runtime(export_dir):
    from digit_reader.runtime.reader import Reader

    for threads in (1, 2):
        reader = Reader(export_dir, device="cpu", threads=threads)
        assert reader.backend.threads == threads


@pytest.mark.slow
@needs_ray
def test_ray_gives_plain_digit_reads_csv_json_and_errors(export_dir, synth_root, tmp_path):
    images = _images(synth_root / "train", tmp_path / "in", 40, big=8)
    (images / "41.png").write_bytes(b"garbage, not a png")
    (images / "42.png").write_bytes(b"")
    want = _plain(images, "--model", export_dir, "--json", tmp_path / "plain.json")
    args = [
        images,
        "--model",
        export_dir,
        "--json",
        tmp_path / "ray.json",
        "--out",
        tmp_path / "pq",
    ]
    got = _run(_ray_read(*args, "--ray", "--cpus", 2, "--actors", 2, "-b", 4))
    assert want.exit_code == got.returncode == 1, got.stderr
    assert got.stdout == want.stdout  # byte-identical pred.csv, nothing else on stdout
    assert len(want.stdout.splitlines()) == 41
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
    errors = [line for line in got.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in want.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {images / '41.png'}: not an image file PIL can read",
        f"error: {images / '42.png'}: empty file (0 bytes)",
    ]
    assert "2 actors x 0.87 CPU (ONNX Runtime threads 1)" in got.stderr
    assert re.search(r"42/42 images, [\d.]+ images/s", got.stderr)
    assert "digit-read: 40 read, 2 failed" in got.stderr

    import pyarrow.parquet as pq

    shards = pq.read_table(tmp_path / "pq").to_pylist()
    rows = [line.split(",") for line in want.stdout.splitlines()[1:]]
    assert [(r["image_id"], r["number"]) for r in shards] == [tuple(r) for r in rows]
    coco = json.loads((tmp_path / "plain.json").read_text())
    first = [d for d in coco if d["image_id"] == 1]
    assert [round(s, 5) for s in shards[0]["scores"]] == [d["score"] for d in first]
    assert [d + 1 for d in shards[0]["digits"]] == [d["category_id"] for d in first]


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no [openvino] extra")
def test_ray_reads_with_openvino_actors_as_plain_openvino_does(export_dir, synth_root, tmp_path):
    images = _images(synth_root / "train", tmp_path / "in", 24)
    want = _plain(images, "--model", export_dir, "--engine", "openvino")
    args = [images, "--model", export_dir, "--engine", "openvino"]
    got = _run(_ray_read(*args, "--ray", "--cpus", 2, "--actors", 2, "-b", 4))
    assert want.exit_code == got.returncode == 0, got.stderr
    assert got.stdout == want.stdout and len(got.stdout.splitlines()) == 25
    assert "2 actors x 0.87 CPU (OpenVINO threads 1)" in got.stderr


def _map_workers(root: int) -> list[int]:
    """Descendants of `root` that are Ray Data map actors (`ray::MapWorker...`), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                if (
                    (Path("/proc") / str(child) / "cmdline")
                    .read_bytes()
                    .startswith(b"ray::MapWorker")
                ):
                    found.append(child)
            except OSError:
                pass
    return found


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's actors in /proc")
def test_an_actor_killed_mid_run_loses_and_repeats_nothing(export_dir, synth_root, tmp_path):
    n = 120
    images = _images(synth_root / "train", tmp_path / "in", n)
    want = _plain(images, "--model", export_dir)
    assert want.exit_code == 0
    args = _ray_read(images, "--model", export_dir, "--ray", "--cpus", 2, "--actors", 2, "-b", 2)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, when, lines = None, None, []
    deadline = time.monotonic() + DEADLINE_S
    try:
        for line in proc.stderr:  # progress comes on stderr, one line per ~2 s
            lines.append(line)
            done = re.search(rf"(\d+)/{n} images", line)
            if killed is None and done and int(done[1]) < n:
                workers = _map_workers(proc.pid)
                if workers:
                    killed, when = workers[0], int(done[1])
                    os.kill(killed, signal.SIGKILL)
            assert time.monotonic() < deadline, "".join(lines)
        out = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            _stop(proc)
    assert killed is not None, "no actor was found to kill:\n" + "".join(lines)
    assert when < n and not Path(f"/proc/{killed}").exists()
    assert out == want.stdout  # every image exactly once, in input order
    assert f"digit-read: {n} read, 0 failed" in "".join(lines)


@pytest.mark.slow
@needs_ray
def test_joining_no_cluster_is_a_usage_error(export_dir, synth_root):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = _run(_ray_read(synth_root / "test", "--model", export_dir, "--ray", "auto"), env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert re.search(r"^error: cannot join Ray at auto: .+", done.stderr, re.M), done.stderr
    assert "Traceback" not in done.stderr


def test_the_benchmark_splits_a_fixed_cost_from_a_cost_per_image():
    from digit_reader.benchmarks.ray_speed import fit

    fixed, per_image = fit([200, 1000], [3.0 + 0.002 * 200, 3.0 + 0.002 * 1000])
    assert fixed == pytest.approx(3.0) and per_image == pytest.approx(0.002)
