"""Restore time and disk: process start to the first training batch of ``fit --resume``, from an attached input and
through the Kaggle API, and the most extra disk the restore holds at once.

A first ``fit`` writes a checkpoint; its newest checkpoint and manifest are staged exactly as a dataset version
holds them, then given twice: copied into an "attached input" folder (``/kaggle/input/<slug>/`` on Kaggle) and
published as version 1 of a dataset on the fake Kaggle server (``tests/fake_kaggle``, driven by the real
``kaggle`` client in the product's child processes). Then, alternating:

- **resume**: ``fit --resume --restore.input_dir <input>`` in a fresh working directory: it finds the checkpoint,
  verifies its sha256, copies it into ``checkpoints/``, loads it and continues.
- **api**: ``fit --resume`` in a fresh working directory with nothing attached, reading the dataset: the manifest,
  then only the chosen checkpoint, downloaded into ``checkpoints/.remote/`` and moved into the folder.
- **api-wrapped**: the same, with the server wrapping the checkpoint in ``<name>.zip`` (as Kaggle serves large
  files); the product's download child unwraps it beside itself.
- **fresh**: the same command without ``--resume``: process start, imports, model and data, no checkpoint.
- **copy**: ``shutil.copyfile`` of the checkpoint file (what the simplest resume would have to do first).

Each ``fit`` runs as its own process; a callback (``FirstStepProbe``) writes the wall clock at the start of the
first training batch and ends the process there. While it runs, a thread of this process polls the bytes under
its working directory (each inode once: a file moved or linked is counted once) and under the kaggle client's
``TMPDIR``; the peak minus what was there before, divided by the checkpoint's size, is the extra disk. The
checkpoint left in ``checkpoints/`` counts: one checkpoint is the least a restore can hold.

As a cross-check, the product's own account (``KaggleDatasetStore.download``'s ``peak_bytes``) is read from one
download of the checkpoint per mode, made from this process into a folder polled the same way.

Storage serves a file, or its zip, that exists already; the fake builds each reply per request (deflating a
230 MB checkpoint takes seconds here), so its replies are built once, before any clock starts.

Usage::

    python -m benchmarks.restore_time            # small (~230 MB checkpoint) on CPU, base on a GPU
    python -m benchmarks.restore_time --quick    # tiny: checks that it runs
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from benchmarks.common import (
    command_line,
    make_parser,
    markdown_table,
    median,
    parse,
    precision_for,
    print_report,
    spread,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent
ARMS = ("resume", "api", "api-wrapped", "fresh", "copy")
#: The arms that download from the fake Kaggle server, and whether the server wraps the checkpoint.
API_ARMS = {"api": False, "api-wrapped": True}
#: Imported by the ``fit`` processes (this module runs as ``__main__``).
PROBE_CLASS = "benchmarks.restore_time.FirstStepProbe"
#: The dataset the checkpoint is published to (owned by the fake server's user).
DATASET_SLUG = "bench-restore-checkpoints"
#: Seconds between two looks at the disk: a 230 MB file written at ~500 MB/s grows by ~1 MB (0.4 %) meanwhile.
POLL_INTERVAL_S = 0.002


class FirstStepProbe(Callback):
    """Writes ``time.time()`` to ``path`` when the first training batch starts, then ends the process at once.

    Args:
        path: file to write the wall-clock time to.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        Path(self.path).write_text(repr(time.time()))
        os._exit(0)  # nothing after the first step is measured; skip the teardown


# -- the disk, seen from outside ----------------------------------------------------------------------------------


def bytes_under(root: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Disk held by the regular files under ``root``: each inode once (in ``seen``), a file's allocated blocks or
    its size, whichever is larger (a file being written may not have its blocks yet). Files that vanish while it
    looks are skipped: the next look counts them where they went."""
    seen = set() if seen is None else seen
    total = 0
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += bytes_under(Path(entry.path), seen)
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += max(stat.st_size, stat.st_blocks * 512)
    return total


@dataclass
class DiskPeak:
    """The most bytes seen at once under each polled folder, minus what was there when polling began."""

    baseline: dict[Path, int] = field(default_factory=dict)
    peak: dict[Path, int] = field(default_factory=dict)
    looks: int = 0
    seconds: float = 0.0

    def extra(self, root: Path) -> int:
        return self.peak[root] - self.baseline[root]


@contextlib.contextmanager
def poll_disk(*roots: Path, interval: float = POLL_INTERVAL_S) -> Iterator[DiskPeak]:
    """Poll the bytes under ``roots`` from a thread of this process while the body runs (a process it starts
    writes them); one more look after the body, so that what is left at the end counts too."""
    result = DiskPeak({root: bytes_under(root) for root in roots})
    result.peak = dict(result.baseline)
    stop = threading.Event()

    def look() -> None:
        for root in roots:
            result.peak[root] = max(result.peak[root], bytes_under(root))
        result.looks += 1

    def poll() -> None:
        while not stop.wait(interval):
            look()

    thread = threading.Thread(target=poll, name="disk-poll", daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        look()
        result.seconds = time.perf_counter() - start


# -- the runs -----------------------------------------------------------------------------------------------------


def fit_config(size: str, device: str, probe: Path | None, input_dir: Path) -> dict:
    """The ``--config`` all runs share; with ``probe`` the first training step ends the process."""
    trainer: dict = {
        "accelerator": "gpu" if device == "cuda" else "cpu",
        "devices": 1,
        "precision": precision_for(device),
        "max_epochs": 3,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,
    }
    if probe is not None:
        trainer["callbacks"] = [{"class_path": PROBE_CLASS, "init_args": {"path": str(probe)}}]
    return {
        "seed_everything": 1234,
        "trainer": trainer,
        "model": {"pe_type": "sinusoidal", "model_size": size},
        "data": {
            "class_path": "lightning_app.data.SyntheticDataModule",
            "init_args": {"vocab_size": 256, "seq_len": 64, "batch_size": 8, "num_train_sequences": 256},
        },
        "checkpoint": {"dirpath": "checkpoints"},
        "sync": {"enabled": False},
        "restore": {"input_dir": str(input_dir)},
    }


def child_env(home: Path, kaggle: dict[str, str] | None = None) -> dict[str, str]:
    """No Kaggle credentials from this machine, or the fake server's (``kaggle``); the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "FAKE_KAGGLE"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), PYTHONUNBUFFERED="1")
    paths = (str(REPO), env.get("PYTHONPATH", ""))
    if kaggle:  # its PYTHONPATH (the fake's sitecustomize, which points the client at it, then ours) first
        env.update(kaggle)
        paths = (kaggle["PYTHONPATH"], str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def fit(config: Path, workdir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lightning_app", "fit", "--config", str(config), *extra]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def make_checkpoint(root: Path, size: str, device: str, env: dict[str, str]) -> Path:
    """Train two steps, then stage the newest checkpoint with its manifest as a dataset version holds them."""
    from lightning_app.persistence.folder import CheckpointFolder

    config = write_config(root / "producer.yaml", fit_config(size, device, None, root / "no-input"))
    producer = root / "producer"
    fit(config, producer, env, "--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "1")
    folder = CheckpointFolder(producer / "checkpoints")
    newest = folder.manifest.newest_first()[0]
    version = root / "version"
    shutil.copytree(folder.stage([newest]), version)  # a copy: the producer's folder goes
    shutil.rmtree(producer)
    return version / newest.file


def attach(version: Path, input_dir: Path) -> None:
    """The version as an attached input (a copy: an attached input is another file system, never a link)."""
    shutil.copytree(version, input_dir / "lm-checkpoints")


def time_fit(
    config: Path, workdir: Path, env: dict[str, str], probe: Path, extra: Sequence[str], polled: Sequence[Path]
) -> tuple[float, DiskPeak, str]:
    """Seconds from just before the process is started to the start of its first training batch, the disk it
    held under ``workdir`` and ``polled``, and what it logged."""
    probe.unlink(missing_ok=True)
    with poll_disk(workdir, *polled) as disk:
        start = time.time()
        done = fit(config, workdir, env, *extra)
    seconds = float(probe.read_text()) - start
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds, disk, done.stdout + done.stderr


def time_copy(source: Path, target: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(source, target)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def check_resumed(arm: str, output: str, checkpoint: Path) -> None:
    """A resume arm that started fresh, or took another checkpoint, would time the wrong thing."""
    expected = "downloaded from kaggle:" if arm in API_ARMS else "found in "
    line = next((row for row in output.splitlines() if "Resuming from" in row), "")
    if checkpoint.name not in line or expected not in line:
        raise RuntimeError(f"{arm}: expected to resume from {checkpoint.name} ({expected}...):\n{output[-3000:]}")


# -- the fake Kaggle server ------------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_kaggle() -> Iterator[object]:
    try:
        from tests.fake_kaggle import FakeKaggle
    except ImportError as error:
        raise SystemExit(f"restore_time needs the fake Kaggle server in tests/fake_kaggle ({error})") from error
    with FakeKaggle() as fake:
        yield fake


def publish(fake, version: Path) -> str:
    """The staged version as version 1 of a dataset of the fake server's user; its ``owner/slug``."""
    ref = f"{fake.username}/{DATASET_SLUG}"
    fake.add_dataset(ref, DATASET_SLUG, {path.name: path.read_bytes() for path in sorted(version.iterdir())})
    return ref


def serve_ready_objects(fake, ref: str, names: Sequence[str]) -> None:
    """Build the fake's replies for ``names`` of version 1 (as they are, and wrapped) once, now; whole-file GETs
    are answered from them. A ranged GET (a client resuming a cut download) is built as before."""
    from tests.fake_kaggle import downloads

    state = fake.state
    build = state.download
    ready: dict[tuple[str, ...], object] = {}

    def download(parts: list[str], range_header: str | None, if_range: str | None):
        if range_header is not None:
            return build(parts, range_header, if_range)
        key = tuple(parts)
        if key not in ready:
            ready[key] = build(parts, None, None)
        return ready[key]

    state.download = download
    for name in names:
        for wrapped in (False, True):
            url = downloads.file_url(state.base_url, ref, 1, name, wrapped)
            parts = urlsplit(url).path.strip("/").split("/")
            if download(parts, None, None) is None:
                raise RuntimeError(f"the fake server does not serve {url}")


def set_wrapping(fake, wrapped: bool, checkpoint_size: int) -> None:
    """Wrap the checkpoint, not the manifest: Kaggle wraps large files only."""
    fake.wrap_files_above(checkpoint_size // 2 if wrapped else None)


@contextlib.contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (and without the variables that would steer the client elsewhere)."""
    from tests.fake_kaggle import UNSET_VARS

    saved = dict(os.environ)
    for name in UNSET_VARS:
        os.environ.pop(name, None)
    os.environ.update(changes)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class ProductReport:
    """One download through ``KaggleDatasetStore.download``: what it reported, and the peak polled outside."""

    wrapped: bool
    peak_bytes: int
    outside_bytes: int
    seconds: float


def product_report(fake, ref: str, checkpoint: Path, wrapped: bool, root: Path) -> ProductReport:
    """Download the checkpoint once through the product's store into a polled folder under ``root``."""
    from lightning_app.persistence.kaggle.store import KaggleDatasetStore

    size = checkpoint.stat().st_size
    set_wrapping(fake, wrapped, size)
    dest = root / "store-download"
    with environment(fake.env(root / "kaggle-store")), poll_disk(dest) as disk:
        start = time.perf_counter()
        downloaded = KaggleDatasetStore(ref).download(checkpoint.name, dest, 1, size)
        seconds = time.perf_counter() - start
    shutil.rmtree(dest)
    if downloaded.wrapped != wrapped:
        raise RuntimeError(f"asked the server to wrap: {wrapped}; the download says wrapped: {downloaded.wrapped}")
    return ProductReport(downloaded.wrapped, downloaded.peak_bytes, disk.extra(dest), seconds)


# -- the benchmark ------------------------------------------------------------------------------------------------


@dataclass
class Results:
    """What `main` measured (returned for the smoke test): seconds and peak extra disk / checkpoint per arm."""

    seconds: dict[str, list[float]]
    disk: dict[str, list[float]]
    tmpdir_bytes: list[int]
    looks_per_second: list[float]
    product: list[ProductReport]
    checkpoint_bytes: int


def main(argv: Sequence[str] | None = None) -> Results:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--size", help="model size (default: small on CPU, base on GPU; tiny with --quick)")
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 3; 1 with --quick)")
    args = parse(parser, argv)
    size = args.size or ("tiny" if args.quick else "base" if args.device == "cuda" else "small")
    repeats = args.repeats or (1 if args.quick else 3)
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    disk: dict[str, list[float]] = {arm: [] for arm in ARMS if arm != "copy"}
    tmpdir_bytes: list[int] = []
    looks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp, fake_kaggle() as fake:
        root = Path(tmp)
        env = child_env(root / "home")
        checkpoint = make_checkpoint(root, size, args.device, env)
        checkpoint_bytes = checkpoint.stat().st_size
        input_dir = root / "input"
        attach(checkpoint.parent, input_dir)
        ref = publish(fake, checkpoint.parent)
        serve_ready_objects(fake, ref, [checkpoint.name])
        kaggle = fake.env(root / "kaggle")
        api_env = child_env(root / "home", kaggle)
        api_flags = ("--resume", "--sync.enabled", "true", "--sync.dataset", ref)
        api_flags += ("--restore.input_dir", str(root / "nothing-attached"))
        probe = root / "first_step.txt"
        config = write_config(root / "fit.yaml", fit_config(size, args.device, probe, input_dir))
        for repeat in range(repeats):
            order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
            for arm in order:
                if arm == "copy":
                    seconds[arm].append(time_copy(checkpoint, root / "copy.ckpt"))
                    continue
                workdir = root / f"{arm}-{repeat}"
                if arm in API_ARMS:
                    set_wrapping(fake, API_ARMS[arm], checkpoint_bytes)
                    tmpdir = Path(kaggle["TMPDIR"])
                    took, held, output = time_fit(config, workdir, api_env, probe, api_flags, [tmpdir])
                    tmpdir_bytes.append(held.extra(tmpdir))
                else:
                    extra = ("--resume",) if arm == "resume" else ()
                    took, held, output = time_fit(config, workdir, env, probe, extra, [])
                if arm != "fresh":
                    check_resumed(arm, output, checkpoint)
                seconds[arm].append(took)
                disk[arm].append(held.extra(workdir) / checkpoint_bytes)
                looks.append(held.looks / held.seconds)
        product = [product_report(fake, ref, checkpoint, wrapped, root) for wrapped in (False, True)]
    results = Results(seconds, disk, tmpdir_bytes, looks, product, checkpoint_bytes)
    report(args, argv, size, repeats, results)
    return results


def report(args, argv: Sequence[str] | None, size: str, repeats: int, results: Results) -> None:
    times, disk = results.seconds, results.disk
    baseline = [f + c for f, c in zip(times["fresh"], times["copy"])]

    def versus(arm: str, reference: list[float]) -> str:
        return _x([t / r for t, r in zip(times[arm], reference)])

    def row(label: str, arm: str) -> list[str]:
        vs_attached = "1.00x" if arm == "resume" else versus(arm, times["resume"])
        return [label, f"{median(times[arm]):.2f}", spread(times[arm]), versus(arm, baseline), vs_attached,
                _x(disk[arm])]  # fmt: skip

    rows = [
        row("fit --resume (attached input)", "resume"),
        row("fit --resume (API, file as it is)", "api"),
        row("fit --resume (API, file wrapped in a zip)", "api-wrapped"),
        ["fit, fresh start", f"{median(times['fresh']):.2f}", spread(times["fresh"]), "-", "-", _x(disk["fresh"])],
        ["plain copy of the checkpoint", f"{median(times['copy']):.2f}", spread(times["copy"]), "-", "-", "-"],
        ["fresh start + copy", f"{median(baseline):.2f}", spread(baseline), "1.00x", "-", "-"],
    ]
    as_is, wrapped = results.product
    megabytes = results.checkpoint_bytes / 1e6

    def share(count: int) -> str:
        return f"{count / results.checkpoint_bytes:.2f}x"

    notes = [
        f"Model `{size}`, checkpoint {megabytes:,.1f} MB, {repeats} alternated runs of each arm (medians; ratios of "
        "the runs of one round). Seconds from process start to the start of the first training batch. Peak extra "
        "disk: the most bytes held at once under the run's fresh working directory (the checkpoint folder's disk; "
        "each inode once), polled from outside the process about every "
        f"{POLL_INTERVAL_S * 1e3:g} ms ({median(results.looks_per_second):.0f} looks/s), over the checkpoint's size; "
        "the restored checkpoint itself is 1x. Goals: resume <= 1.2x (fresh start + copy); API restore of a file "
        "as it is <= 1.1x one checkpoint of extra disk; wrapped: logged (about 2x expected: the zip, then the file "
        "beside it).",
        "The product's own report, one download per mode through `KaggleDatasetStore.download` (its `peak_bytes`), "
        f"next to the peak polled outside during that download: as it is {share(as_is.peak_bytes)} (outside "
        f"{share(as_is.outside_bytes)}; the call took {as_is.seconds:.2f} s: a child process, the client's import, "
        f"the bytes), wrapped {share(wrapped.peak_bytes)} (outside {share(wrapped.outside_bytes)}; "
        f"{wrapped.seconds:.2f} s, the unwrapping included). "
        f"The kaggle client's TMPDIR (outside the working directory) held at most "
        f"{max(results.tmpdir_bytes, default=0) / 1e3:,.1f} kB extra during the API restores. The fake server's "
        "replies are built once before timing (storage serves a file or zip that exists).",
    ]
    headers = ("arm", "seconds (median)", "range", "vs fresh + copy", "vs attached resume", "peak extra disk")
    print_report("Restore time", args.device, command_line("benchmarks.restore_time", argv),
                 markdown_table(headers, rows), notes)  # fmt: skip


def _x(ratios: list[float]) -> str:
    return f"{median(ratios):.2f}x ({spread(ratios)})"


if __name__ == "__main__":
    main()
