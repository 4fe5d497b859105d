"""What Kaggle and its client accept: dataset and kernel names (``OWNER/SLUG``) and the files a publish would upload."""

from __future__ import annotations

import re
from pathlib import Path

from lightning_app.errors import bad_value
from lightning_app.persistence.store import StoreError

#: Read by the client to learn the dataset's id, title and license; never uploaded.
METADATA_NAME = "dataset-metadata.json"
#: Files the client silently never uploads: publishing one would lose it.
_SKIPPED_BY_CLIENT = re.compile(
    r"^(datapackage\.json|kernel-metadata\.json|model-metadata\.json|model-instance-metadata\.json"
    r"|dataset-cover-image\.(png|jpg|jpeg|webp))$"
)
_DATASET_RE = re.compile(r"^[A-Za-z0-9_-]+/[a-z0-9-]{6,50}$")
DATASET_RULE = "OWNER/SLUG with a slug of 6 to 50 lower-case letters, digits or '-', e.g. alice/rope-small-checkpoints"


def check_dataset(option: str, dataset: str) -> None:
    """Raise ``ConfigError`` (one line) unless ``dataset`` follows Kaggle's OWNER/SLUG rule."""
    if not _DATASET_RE.match(dataset):
        raise bad_value(option, dataset, DATASET_RULE)


def local_files(folder: Path) -> dict[str, int]:
    """``{name: size}`` of the regular files directly in ``folder`` (what the client will upload)."""
    if not folder.is_dir():
        raise StoreError(f"not a folder: {folder}")
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != METADATA_NAME}
    skipped = sorted(name for name in files if _SKIPPED_BY_CLIENT.match(name))
    if skipped:
        raise StoreError(f"the kaggle client never uploads {', '.join(skipped)}: rename before publishing")
    if not files:
        raise StoreError(f"nothing to publish in {folder}")
    return files


_KERNEL_RE = re.compile(r"^[A-Za-z0-9_-]+/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
KERNEL_RULE = "OWNER/SLUG with a slug of lower-case letters, digits or '-' (5 to {longest} characters)"


def check_kernel(option: str, ref: str, longest: int = 50) -> None:
    """Raise ``ConfigError`` (one line) unless ``ref`` is a kernel ``OWNER/SLUG`` Kaggle takes (a slug is its title
    lower-cased with hyphens; the client wants 5 characters or more) of at most ``longest`` characters."""
    slug = ref.partition("/")[2]
    if not _KERNEL_RE.match(ref) or not 5 <= len(slug) <= longest:
        raise bad_value(option, ref, KERNEL_RULE.format(longest=longest))
