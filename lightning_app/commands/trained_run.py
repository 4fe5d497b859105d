"""A trained run as ``generate`` and ``lengths`` read it: its newest checkpoint and the data it trained on."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from lightning_app.errors import bad_value
from lightning_app.persistence.folder import read_manifest

DEFAULT_DATA = {"class_path": "lightning_app.data.SyntheticDataModule", "init_args": {}}


def find_checkpoint(raw: str) -> Path:
    """A ``.ckpt`` file as given, or a run folder's newest checkpoint (its own or its ``checkpoints/``)."""
    path = Path(raw)
    if path.is_file():
        return path
    for folder in (path, path / "checkpoints"):
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is not None and manifest.entries:
            return folder / manifest.newest_first()[0].file
        found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        if found:
            return found[-1]
    raise bad_value("CKPT_OR_RUN_DIR", raw, "a .ckpt file or a run folder holding checkpoints")


def read_data_config(path: Path) -> dict:
    """The ``data`` section of a CLI config file as ``{"class_path", "init_args"}``."""
    try:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError) as error:
        raise bad_value("--config", str(path), f"a readable YAML config file ({error})") from None
    if "class_path" not in data:
        return {"class_path": DEFAULT_DATA["class_path"], "init_args": dict(data)}
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}


def training_data(checkpoint: Path, hparams: dict) -> dict:
    """The data section the run was trained with, found beside its logs; the synthetic default otherwise."""
    pattern = f"logs/lm/{hparams.get('pe_type')}-{hparams.get('model_size')}-*/config.yaml"
    roots = [checkpoint.parent, checkpoint.parent.parent]
    configs = sorted((c for root in roots for c in root.glob(pattern)), key=lambda p: p.stat().st_mtime)
    if configs:
        return read_data_config(configs[-1])
    return {"class_path": DEFAULT_DATA["class_path"], "init_args": {"vocab_size": hparams.get("vocab_size")}}


def build_datamodule(data: dict, seq_len: int):
    """The data module of ``data`` (a config's ``data`` section) with ``seq_len`` replaced."""
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**{**data["init_args"], "seq_len": seq_len})
    except TypeError as error:  # an unknown --data.KEY
        raise bad_value("--data.*", sorted(data["init_args"]), f"settings of {class_name} ({error})") from None
