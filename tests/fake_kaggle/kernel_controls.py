"""The test's side of the fake's kernels: play the platform (take a queued session, run it, end it) and set the
quota and the push refusals. Mixed into ``FakeKaggle``; the state and the RPCs are in ``kernels.py``.

A test-side "Kaggle runner" looks like::

    session = fake.next_queued(timeout=30)          # a pushed version waiting to run (None: none came)
    fake.set_kernel_status(session.ref, session.number, "RUNNING")
    ...                                             # run session.source as a batch session would
    fake.use_gpu_time(seconds)                      # what the session cost of the weekly quota
    fake.set_kernel_status(session.ref, session.number, "COMPLETE")   # or "ERROR", failure_message=...
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from tests.fake_kaggle.kernels import AcceleratorQuota, Kernel, KernelVersion, snapshot

if TYPE_CHECKING:
    from tests.fake_kaggle.state import FakeState


class KernelControls:
    """Kernel and quota methods of ``FakeKaggle`` (which provides ``state``)."""

    state: FakeState

    def add_kernel(
        self,
        ref: str,
        source: str = "print('made in the web editor')\n",
        *,
        title: str | None = None,
        language: str = "python",
        kernel_type: str = "script",
        is_private: bool = True,
    ) -> None:
        """A kernel that already exists (made in the web editor), with one saved version that never ran."""
        owner, slug = ref.split("/")
        kernels = self.state.kernels
        with kernels.lock:
            kernel = kernels.add(owner, slug, title or slug, language, kernel_type, is_private)
            kernel.versions.append(_first_version(kernel, source))

    def kernel_versions(self, ref: str) -> list[KernelVersion]:
        """Copies of every version of kernel ``ref``, oldest first (Quick Saves included)."""
        with self.state.lock:
            kernel = self.state.kernels.kernels.get(ref)
            return [snapshot(v) for v in kernel.versions] if kernel else []

    def kernel_sessions(self, ref: str) -> list[KernelVersion]:
        """Copies of the versions of ``ref`` that were to run (each one session), oldest first."""
        return [v for v in self.kernel_versions(ref) if v.runs]

    def next_queued(self, timeout: float) -> KernelVersion | None:
        """The oldest queued session of any kernel, waiting up to ``timeout`` s for one (None if none came)."""
        kernels = self.state.kernels
        with kernels.changed:
            kernels.changed.wait_for(lambda: bool(kernels.queued()), timeout=timeout)
            waiting = kernels.queued()
            return snapshot(waiting[0]) if waiting else None

    def wait_for_kernel_status(self, ref: str, number: int, statuses: tuple[str, ...], timeout: float) -> str:
        """Wait up to ``timeout`` s until version ``number`` of ``ref`` has one of ``statuses``; its status then."""
        kernels = self.state.kernels
        with kernels.changed:
            kernels.changed.wait_for(lambda: kernels.version(ref, number).status in statuses, timeout=timeout)
            return kernels.version(ref, number).status

    def set_kernel_status(self, ref: str, number: int, status: str, *, failure_message: str = "") -> None:
        """Move version ``number`` of ``ref`` to ``status`` (a ``KernelWorkerStatus`` name), in the platform's
        order (QUEUED -> RUNNING -> COMPLETE / ERROR; CANCEL_REQUESTED -> CANCEL_ACKNOWLEDGED); ValueError else."""
        with self.state.lock:
            self.state.kernels.set_status(ref, number, status, failure_message)

    def set_gpu_quota(
        self,
        *,
        used: float = 0.0,
        allowed: float = 30 * 3600.0,
        reserved: float = 0.0,
        refresh_at: datetime | None = None,
    ) -> None:
        """The weekly GPU quota the quota call reports (seconds) and when it refreshes (timezone-aware; None: the
        reply has no refresh time). A GPU run pushed with ``used >= allowed`` is refused."""
        with self.state.lock:
            self.state.kernels.gpu_quota = AcceleratorQuota(used, allowed, reserved)
            self.state.kernels.quota_refresh = refresh_at

    def hide_gpu_quota(self) -> None:
        """The quota call's reply carries no ``gpuQuota`` (as for an account the service tells nothing about)."""
        with self.state.lock:
            self.state.kernels.gpu_quota = None

    def use_gpu_time(self, seconds: float) -> None:
        """Add ``seconds`` to the weekly GPU time used (what a finished GPU session cost)."""
        with self.state.lock:
            quota = self.state.kernels.gpu_quota
            if quota is None:
                raise RuntimeError("the GPU quota is hidden; set_gpu_quota() first")
            quota.used += seconds

    def refuse_next_push(self, error: str, n: int = 1) -> None:
        """The next ``n`` SaveKernel calls answer HTTP 200 with ``error`` and make no version."""
        with self.state.lock:
            self.state.kernels.push_refusals.extend([error] * n)

    def session_limits(self, *, gpu: int = 2, cpu: int = 5) -> None:
        """How many batch sessions (queued or running) an account may have at once, on a GPU and on CPU."""
        with self.state.lock:
            self.state.kernels.gpu_session_limit, self.state.kernels.cpu_session_limit = gpu, cpu


def _first_version(kernel: Kernel, source: str) -> KernelVersion:
    return KernelVersion(
        ref=kernel.ref,
        number=1,
        source=source,
        title=kernel.title,
        language=kernel.language,
        kernel_type=kernel.kernel_type,
        is_private=kernel.is_private,
        enable_internet=False,
        enable_gpu=False,
        enable_tpu=False,
        machine_shape=None,
        accelerator=None,
        dataset_sources=[],
        kernel_sources=[],
        competition_sources=[],
        model_sources=[],
        session_timeout=None,
        execution="QUICK_SAVE",
        runs=False,
        status="NEW_SCRIPT",
    )
