"""Upload volume: bytes sent to the (fake) Kaggle server per dataset version, project versus the seed's way.

Both arms train the same model for ``--epochs`` epochs with a checkpoint at the end of each, and publish every
epoch through the real ``kaggle`` client to one fake Kaggle server (``tests/fake_kaggle``) on 127.0.0.1, which
counts the bytes each version's blob uploads carried:

- **project**: ``KaggleModelCheckpoint`` (``keep_last`` 3) and ``KaggleDatasetSync`` (``upload_last`` 1): each
  version holds the newest checkpoint and ``manifest.json``. Training waits at each epoch start for the previous
  publish (``sync.flush()``), so that every epoch becomes a version rather than the newest one winning.
- **seed**: Lightning's ``ModelCheckpoint`` keeping every epoch's file, then ``kaggle datasets version -p
  checkpoints/`` (``create`` the first time) of the whole folder after each save.

Usage::

    python -m benchmarks.upload_volume            # 10 epochs of the default model (configs/default.yaml's size)
    python -m benchmarks.upload_volume --quick    # 3 epochs of tiny: checks that it runs
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from benchmarks.common import command_line, make_parser, markdown_table, parse, precision_for, print_report, quiet
from callbacks.checkpoint import KaggleModelCheckpoint
from callbacks.kaggle_sync import KaggleDatasetSync
from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel

PROJECT_DATASET = "benchmark-project-checkpoints"
SEED_DATASET = "benchmark-seed-checkpoints"


class WholeFolderUpload(ModelCheckpoint):
    """The seed's way: keep every epoch's checkpoint; after each save publish the whole folder with the kaggle CLI.

    Args:
        dirpath: the checkpoint folder (uploaded whole).
        dataset: ``owner/slug``.
        env: environment of the ``kaggle`` command (credentials, endpoint).
    """

    def __init__(self, dirpath: Path, dataset: str, env: dict[str, str]) -> None:
        super().__init__(dirpath=dirpath, filename="kaggle_epoch_{epoch}", save_top_k=-1, every_n_epochs=1)
        self.folder, self.dataset, self.env = Path(dirpath), dataset, env
        self.versions = 0

    @override
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        metadata = {"title": self.dataset.split("/")[1], "id": self.dataset, "licenses": [{"name": "CC0-1.0"}]}
        (self.folder / "dataset-metadata.json").write_text(json.dumps(metadata))
        verb = ["create"] if self.versions == 0 else ["version", "-m", f"epoch {trainer.current_epoch}"]
        command = [sys.executable, "-m", "kaggle", "datasets", *verb, "-p", str(self.folder)]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout[-500:]} {done.stderr[-2000:]}")
        self.versions += 1


class PublishEveryEpoch(Callback):
    """At each epoch start, wait until the previous epoch's checkpoint is published."""

    def __init__(self, sync: KaggleDatasetSync) -> None:
        self.sync = sync

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0 and not self.sync.flush(timeout=600):
            raise RuntimeError("the previous checkpoint was not published within 10 minutes")


@contextlib.contextmanager
def fake_kaggle(tmp: Path) -> Iterator[tuple[object, dict[str, str]]]:
    """A started fake Kaggle server, and ``os.environ`` pointed at it for the duration (restored afterwards)."""
    try:
        from tests.fake_kaggle import UNSET_VARS, FakeKaggle
    except ImportError as error:
        raise SystemExit(f"upload_volume needs the fake Kaggle server in tests/fake_kaggle ({error})") from error
    tempfile.gettempdir()  # cache this process's temp dir: TMPDIR below is for the kaggle client's processes
    saved = dict(os.environ)
    with FakeKaggle() as fake:
        env = fake.env(tmp)
        for name in UNSET_VARS:
            os.environ.pop(name, None)
        os.environ.update(env)
        try:
            yield fake, dict(os.environ)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _model_and_data(quick: bool) -> tuple[LanguageModel, SyntheticDataModule]:
    # configs/default.yaml's model (tiny preset, d_model 128, 4 layers); the bare tiny preset with --quick.
    sizes = {} if quick else {"d_model": 128, "n_layers": 4}
    model = LanguageModel(pe_type="sinusoidal", model_size="tiny", vocab_size=64, **sizes)
    data = SyntheticDataModule(vocab_size=64, seq_len=32, batch_size=16, num_train_sequences=64, num_val_sequences=16)
    return model, data


def train(callbacks: list[Callback], epochs: int, quick: bool, root: Path) -> None:
    model, data = _model_and_data(quick)
    with quiet():
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision_for("cpu"),
            max_epochs=epochs,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
            use_distributed_sampler=False,
        )
        trainer.fit(model, datamodule=data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, help="epochs, one version each (default 10; 3 with --quick)")
    args = parse(parser, argv)
    epochs = args.epochs or (3 if args.quick else 10)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp, fake_kaggle(Path(tmp)) as (fake, env):
        root = Path(tmp)
        project_ref, seed_ref = f"{fake.username}/{PROJECT_DATASET}", f"{fake.username}/{SEED_DATASET}"
        checkpoint = KaggleModelCheckpoint(dirpath=str(root / "project" / "checkpoints"), verbose=False)
        sync = KaggleDatasetSync(dataset=project_ref, enabled=True, upload_last=1)
        train([checkpoint, sync, PublishEveryEpoch(sync)], epochs, args.quick, root / "project")
        train([WholeFolderUpload(root / "seed" / "checkpoints", seed_ref, env)], epochs, args.quick, root / "seed")
        project, seed = fake.versions(project_ref), fake.versions(seed_ref)
    rows = []
    for number in range(1, max(len(project), len(seed)) + 1):
        ours = project[number - 1] if number <= len(project) else None
        theirs = seed[number - 1] if number <= len(seed) else None
        rows.append(_row(str(number), ours, theirs))
    rows.append(_totals(project, seed))
    headers = ("version", "project MB sent", "project files", "seed MB sent", "seed files", "seed / project")
    notes = [
        f"{epochs} epochs, one checkpoint each ({_checkpoint_mb(project):.1f} MB), published through the real kaggle "
        "client to the fake Kaggle server; bytes as received by its blob uploads. Goal: flat per version with the "
        "project, growing linearly with the seed's whole-folder upload."
    ]
    command = command_line("benchmarks.upload_volume", argv)
    print_report("Upload volume", "cpu", command, markdown_table(headers, rows), notes)


def _row(label: str, ours, theirs) -> list[object]:
    sent = [v.bytes_uploaded if v is not None else None for v in (ours, theirs)]
    ratio = f"{sent[1] / sent[0]:.1f}x" if all(sent) else "-"
    cells = []
    for version, nbytes in zip((ours, theirs), sent):
        cells += [f"{nbytes / 1e6:.2f}" if nbytes is not None else "-", str(len(version.files)) if version else "-"]
    return [label, *cells, ratio]


def _totals(project: list, seed: list) -> list[object]:
    ours, theirs = sum(v.bytes_uploaded for v in project), sum(v.bytes_uploaded for v in seed)
    return ["total", f"{ours / 1e6:.2f}", "-", f"{theirs / 1e6:.2f}", "-", f"{theirs / ours:.1f}x" if ours else "-"]


def _checkpoint_mb(project: list) -> float:
    sizes = [max(v.sizes.values()) for v in project if v.files]
    return max(sizes) / 1e6 if sizes else 0.0


if __name__ == "__main__":
    main()
