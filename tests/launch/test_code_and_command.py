"""What goes to the kernel: the project's wheel (versioned only when it changes) and the files the command names."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from lightning_app.errors import ConfigError
from lightning_app.launch.code_bundle import CODE_FILE, build_bundle, build_wheel, publish_bundle
from lightning_app.launch.command import prepare
from lightning_app.persistence.directory_store import DirectoryStore
from tests.cli_helpers import SMOKE


def test_the_wheel_holds_every_package_and_the_same_code_makes_the_same_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = build_wheel(tmp_path / "a"), build_wheel(tmp_path / "b")
    assert first.name == second.name == "kaggle_resumable_lm-0.1.0-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as wheel:
        names = set(wheel.namelist())
        for module in (
            "lightning_app/commands/fit.py",
            "lightning_app/launch/kernel_session.py",
            "lightning_app/persistence/kaggle/child.py",
            "callbacks/kaggle_sync.py",
        ):
            assert module in names
        info = "kaggle_resumable_lm-0.1.0.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert "Requires-Dist: pytorch-lightning>=2.4,<2.7" in metadata and "Requires-Dist: kaggle>=1.8.3" in metadata
        for line in wheel.read(f"{info}/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if digest:  # RECORD itself has none
                data = wheel.read(path)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={expected}" and int(size) == len(data)
        assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def test_the_code_is_published_again_only_when_it_changed(tmp_path):
    store = DirectoryStore(tmp_path / "store")
    config = tmp_path / "run.yaml"
    config.write_text("seed_everything: 1\n")

    def publish(name: str):
        bundle = build_bundle({"run.yaml": config}, tmp_path / name)
        newest = store.read_version(texts=(CODE_FILE,)) if (tmp_path / "store").exists() else None
        return publish_bundle(bundle, store, newest)

    assert publish("first") == (1, True)
    assert publish("again") == (1, False)
    config.write_text("seed_everything: 2\n")  # the same size, other bytes
    assert publish("changed") == (2, True)
    assert publish("changed-again") == (2, False)


def test_a_fit_takes_its_files_along(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "b.txt").write_text("the second file " * 200)
    (corpus / "a.txt").write_text("the first file " * 200)
    text = tmp_path / "text.yaml"
    text.write_text(
        "data:\n  class_path: lightning_app.data.TextDataModule\n  init_args:\n    path: nowhere/*.txt\n"
        "    seq_len: 16\n    batch_size: 4\nmodel:\n  model_size: tiny\n"
    )
    prepared = prepare(["fit", f"--config={text}", "--data.path", str(corpus), "--resume"], "alice")
    assert prepared.files == {
        "text.yaml": text,
        "corpus-0000-a.txt": corpus / "a.txt",
        "corpus-0001-b.txt": corpus / "b.txt",
    }
    dataset = f"alice/{prepared.default_slug}-checkpoints"
    assert prepared.args == [
        "--config",
        {"code": "text.yaml"},
        "--data.path",
        {"code": "corpus-*"},  # read back in the same order
        "--sync.dataset",
        dataset,
    ]
    assert prepared.checkpoints == dataset and prepared.default_slug.startswith("sinusoidal-tiny-")


def test_a_fit_without_a_config_takes_the_default_one_along():
    prepared = prepare(["fit", "--sync.dataset", "alice/my-own-checkpoints", "--model.model_size", "tiny"], "alice")
    assert prepared.args[:2] == ["--config", {"code": "default.yaml"}] and prepared.files["default.yaml"].is_file()
    assert prepared.checkpoints == "alice/my-own-checkpoints" and prepared.args.count("--sync.dataset") == 1


def test_a_sweep_takes_its_files_along_and_is_checked_where_it_runs(tmp_path):
    corpus = tmp_path / "poems.txt"
    corpus.write_text("a poem " * 100)
    config = tmp_path / "sweep.yaml"
    config.write_text(f"data:\n  init_args:\n    path: {corpus}\nsweep:\n  grid:\n    model.pe_type: [rope, alibi]\n")
    prepared = prepare(["sweep", "--config", str(config), "--sweep.name", "pe-compare"], "alice")
    assert prepared.files == {"sweep.yaml": config, "corpus-0000-poems.txt": corpus}
    assert prepared.args == [
        "--config",
        {"code": "sweep.yaml"},
        "--sweep.name",
        "pe-compare",
        "--data.path",
        {"code": "corpus-0000-poems.txt"},
    ]
    assert prepared.default_slug == "pe-compare" and prepared.checkpoints is None


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["train", "--config", str(SMOKE)], "launch: got 'train' after '--'; expected one of: fit, sweep"),
        (["fit", "--config", str(SMOKE), "--resume", "x.ckpt"], "--resume: got 'x.ckpt'; a launched chain resumes"),
        (["fit", "--config", str(SMOKE), "--sync.directory", "/content/drive"], "--sync.directory: got"),
        (["fit", "--config", str(SMOKE), "--sync.enabled", "false"], "--sync.enabled: got False"),
        (["fit", "--config", str(SMOKE), "--model.pe_type", "nope"], "--model.pe_type: got 'nope'; expected one of"),
        (["fit", "--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_commands_a_chain_cannot_run_are_refused_in_one_line(words, message):
    with pytest.raises(ConfigError) as refused:
        prepare(words, "alice")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_nothing_is_written_where_launch_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare(["fit", "--config", str(SMOKE)], "alice")
    assert list(Path(tmp_path).iterdir()) == []
