"""What one pushed session of a chain is to do: the `Plan` written into its generated script.

The plan names the kernel, the command and its arguments (files taken along stand as ``{"code": name}``: a file of
the code dataset, wherever Kaggle mounts it), the datasets of the chain, the accelerator and the quota kept back,
and who pushed this session (``pushed_by``: a version of the kernel, or None for the user's ``launch``) with a
``token`` found in this version's source only (how a session learns its own version number, and how a retried push
recognises its own version). The next session's plan is this one with a new token (`Plan.next`).

A plan holds no credential: the kernel's Secrets do.

The datasets of the chain of kernel ``OWNER/SLUG``: ``OWNER/SLUG-code`` (the project's wheel and the files the
command names), ``OWNER/SLUG-chain`` (the chain's status, ``chain.json``), ``OWNER/SLUG-stop`` (``launch --stop``
writes there, so that no write of the status can lose it); the run's checkpoints stay in the run's own dataset.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lightning_app.launch.accelerators import uses_gpu

FORMAT = 1
#: The longest kernel slug whose chain datasets (``SLUG-chain``: 6 more characters) stay within Kaggle's 50.
LONGEST_KERNEL_SLUG = 44
#: What the kernel installs beside the project's wheel: a client that can read the weekly GPU quota.
KERNEL_REQUIREMENTS = ("kaggle>=2.2.1",)
#: The commands a chain runs.
COMMANDS = ("fit", "sweep")


def new_token() -> str:
    """A string that appears in one pushed version's source only."""
    return f"session-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Plan:
    """One session of the chain of kernel ``kernel``.

    Attributes:
        kernel: ``owner/slug``.
        command: ``fit`` or ``sweep``.
        args: the command's arguments; a file taken along is ``{"code": name}`` (see `command_line`).
        checkpoints: the ``fit``'s dataset (``--sync.dataset``); None for a sweep (a dataset per trial).
        accelerator: Kaggle's ``machine_shape``; None: the CPU.
        keep_quota_hours: weekly GPU hours the chain leaves for other work.
        wheel: the project's wheel, a file of the code dataset.
        launch_command: the ``launch`` command line the user ran (how to go on after a pause).
        launched_at: when the user ran it (epoch seconds); a ``launch --stop`` after that stops the chain.
        token: this version's token.
        pushed_by: the version that pushed this one; None when the user's ``launch`` did.
        pushed_at: when it was pushed (epoch seconds).
        install: what the kernel installs beside the wheel.
    """

    kernel: str
    command: str
    args: tuple[Any, ...]
    checkpoints: str | None
    accelerator: str | None
    keep_quota_hours: float
    wheel: str
    launch_command: str
    launched_at: float
    token: str = field(default_factory=new_token)
    pushed_by: int | None = None
    pushed_at: float = field(default_factory=time.time)
    install: tuple[str, ...] = KERNEL_REQUIREMENTS

    @property
    def owner(self) -> str:
        return self.kernel.split("/")[0]

    @property
    def slug(self) -> str:
        return self.kernel.split("/")[1]

    @property
    def code_dataset(self) -> str:
        return chain_datasets(self.kernel)["code"]

    @property
    def chain_dataset(self) -> str:
        return chain_datasets(self.kernel)["chain"]

    @property
    def stop_dataset(self) -> str:
        return chain_datasets(self.kernel)["stop"]

    @property
    def uses_gpu(self) -> bool:
        return uses_gpu(self.accelerator)

    def next(self, by_version: int | None) -> Plan:
        """The plan of the session this one pushes: a new token, pushed now by ``by_version``."""
        return replace(self, token=new_token(), pushed_by=by_version, pushed_at=time.time())

    def command_line(self, code_folder: Path) -> list[str]:
        """The command's arguments, each file taken along named where the code dataset is mounted."""
        return [str(code_folder / arg["code"]) if isinstance(arg, dict) else str(arg) for arg in self.args]

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            **asdict(self),
            **{f"{name}_dataset": ref for name, ref in chain_datasets(self.kernel).items()},
        }
        data["args"], data["install"] = list(self.args), list(self.install)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        data.pop("format", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["args"] = tuple(known["args"])
        known["install"] = tuple(known.get("install", KERNEL_REQUIREMENTS))
        return cls(**known)


def chain_datasets(kernel: str) -> dict[str, str]:
    """The chain's own datasets: ``{"code": OWNER/SLUG-code, "chain": OWNER/SLUG-chain, "stop": OWNER/SLUG-stop}``."""
    return {name: f"{kernel}-{name}" for name in ("code", "chain", "stop")}
