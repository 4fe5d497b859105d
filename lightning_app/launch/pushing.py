"""One push of a session of the chain: the generated kernel written, and pushed at most once.

A push whose reply is lost may have queued a run. So every attempt after the first looks first whether the newest
version of the kernel holds this push's token (the version an earlier attempt made): then that is the version, and
nothing is pushed again. A refusal (`PushRefused`: the weekly quota, the session limit, a name Kaggle will not take)
is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning_app.launch.plan import Plan
from lightning_app.launch.retries import retried
from lightning_app.launch.script import write_kernel
from lightning_app.persistence.kaggle.kernels import KaggleKernels, PushedKernel


def push_session(
    plan: Plan,
    kernels: KaggleKernels,
    folder: Path,
    sources: list[str],
    *,
    quick_save: bool = False,
    say: Callable[[str], None] = print,
) -> PushedKernel:
    """Write ``plan``'s kernel into ``folder`` and push it (with ``quick_save``: save it, do not run it)."""
    write_kernel(plan, sources, folder)
    attempts = 0

    def attempt() -> PushedKernel:
        nonlocal attempts
        attempts += 1
        return kernels.push(folder, quick_save=quick_save, token=plan.token, look_first=attempts > 1)

    return retried(attempt, f"pushing {plan.kernel}", say)
