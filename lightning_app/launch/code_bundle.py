"""The project's code for the kernel: a wheel, with the files the command names, in a private dataset of their own.

The wheel is written here, not by a build backend: a zip of the project's packages (``lightning_app``,
``callbacks``) and the ``.dist-info`` that ``pip`` reads (name, version, ``Requires-Dist``, ``RECORD``), with fixed
timestamps and order, so the same code always makes the same bytes; nothing is written into the source tree. The
kernel installs it with its dependencies (the internet is on).

``code.json`` lists the sha256 of every file of the bundle. A new version of the code dataset is published only
when that list differs from the newest version's, so the dataset is versioned only when the code (or a file the
command names) changes. A dataset version holds files, not folders (``dir_mode`` skip): the bundle is flat.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import lightning_app
from lightning_app.persistence.store import CheckpointStore, VersionContents

#: The bundle's table of contents, published with it.
CODE_FILE = "code.json"
#: The project's packages (their subpackages are found by their ``__init__.py``).
PACKAGES = ("lightning_app", "callbacks")
_DISTRIBUTION = "kaggle-resumable-lm"
#: Every file of the wheel gets this date: the same code makes the same bytes.
_FIXED_DATE = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CodeBundle:
    """A folder holding the wheel, the files taken along and ``code.json``.

    Attributes:
        folder: where they are.
        wheel: the wheel's file name.
        digests: ``{file name: sha256}`` of everything but ``code.json``.
    """

    folder: Path
    wheel: str
    digests: dict[str, str]

    def contents_text(self) -> str:
        return json.dumps({"wheel": self.wheel, "files": self.digests}, indent=1, sort_keys=True) + "\n"


def project_root() -> Path:
    """The folder holding the project's packages (a checkout, or site-packages of an installed wheel)."""
    return Path(lightning_app.__file__).resolve().parents[1]


def build_bundle(files: dict[str, Path], folder: Path) -> CodeBundle:
    """Write the wheel and copy ``files`` (``{name: local path}``) into ``folder`` (which must be empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(folder)
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    digests = {p.name: _sha256(p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}
    bundle = CodeBundle(folder, wheel.name, digests)
    (folder / CODE_FILE).write_text(bundle.contents_text())
    return bundle


def publish_bundle(
    bundle: CodeBundle, store: CheckpointStore, newest: VersionContents | None
) -> tuple[int | None, bool]:
    """Publish the bundle unless ``newest`` (the newest version of ``store``, read with ``code.json``; None: there
    is none) already holds it: ``(version, published)``."""
    newest_text = newest.texts.get(CODE_FILE) if newest is not None else None
    if newest_text is not None and newest_text.strip() == bundle.contents_text().strip():
        return newest.number, False
    if newest_text is not None and len(newest_text) == len(bundle.contents_text()):
        # Files of the same names and sizes: the publish would take them for the newest version (a retry after a
        # lost reply); one more byte in code.json tells them apart.
        (bundle.folder / CODE_FILE).write_text(bundle.contents_text() + " ")
    published = store.publish(bundle.folder, f"code {bundle.digests[bundle.wheel][:12]}")
    return published.number, True


# -- the wheel ------------------------------------------------------------------------------------------------------


def build_wheel(folder: Path) -> Path:
    """A pure-Python wheel of the project (``py3-none-any``) in ``folder``; the same code makes the same bytes."""
    name, version, requires_python, requirements = project_metadata()
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    root = project_root()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts and _in_package(path, root):
                entries.append((path.relative_to(root).as_posix(), path.read_bytes()))
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    lines += [f"Requires-Dist: {requirement}" for requirement in requirements]
    entries.append((f"{info}/METADATA", ("\n".join(lines) + "\n").encode()))
    wheel_text = "Wheel-Version: 1.0\nGenerator: lightning_app.launch\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries.append((f"{info}/WHEEL", wheel_text.encode()))
    entries.append((f"{info}/top_level.txt", ("\n".join(PACKAGES) + "\n").encode()))
    record = [f"{path},sha256={_urlsafe_digest(data)},{len(data)}" for path, data in entries]
    record.append(f"{info}/RECORD,,")
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    target = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in entries:
            item = zipfile.ZipInfo(path, date_time=_FIXED_DATE)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(item, data)
    return target


def _in_package(path: Path, root: Path) -> bool:
    """Whether every folder from the top-level package down to ``path`` is a package (has ``__init__.py``)."""
    folder = path.parent
    while folder != root:
        if not (folder / "__init__.py").is_file():
            return False
        folder = folder.parent
    return True


def project_metadata() -> tuple[str, str, str, list[str]]:
    """``(name, version, requires_python, requirements)``: from ``setup.cfg`` beside the packages (a checkout), else
    from the installed distribution's metadata."""
    setup_cfg = project_root() / "setup.cfg"
    if setup_cfg.is_file():
        config = configparser.ConfigParser()
        config.read(setup_cfg)
        requirements = [
            line.split("#")[0].strip()
            for line in config.get("options", "install_requires", fallback="").splitlines()
            if line.split("#")[0].strip()
        ]
        return (
            config.get("metadata", "name"),
            config.get("metadata", "version"),
            config.get("options", "python_requires", fallback=""),
            requirements,
        )
    found = metadata.metadata(_DISTRIBUTION)
    requirements = [r for r in metadata.requires(_DISTRIBUTION) or [] if "extra ==" not in r]
    return found["Name"], found["Version"], found.get("Requires-Python", ""), requirements


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
