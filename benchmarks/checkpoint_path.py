"""Checkpoint path: the project modules one checkpoint passes through, out to a dataset version and back.

Issue 23's check, measured instead of read: follow one checkpoint from the training step to a dataset version
and back through ``--resume``; count the modules it passes through and the returns to a module already left.

- **the way out**: ``python -m lightning_app fit`` (smoke config, one epoch, ``--sync.directory`` a folder
  store, so that publishing stays in this process), from the first call of ``KaggleModelCheckpoint.save_now``
  until the sync's flush at the end of ``fit`` returns (the publisher has recorded the published version);
- **the way back**: ``fit --resume`` in a fresh working directory, nothing local, the same store, from the start
  of the command until the LightningModule's ``on_train_start`` returns (the RNG restored).

Both commands run in this process (``runpy``, as ``python -m`` would), traced with ``sys.setprofile`` and
``threading.setprofile``: every thread, the checkpoint writer's and the publisher's included. A module is
*entered* when one of its functions is called; a generator when it starts (resuming it is control coming back,
as after a call returns; counting it would also make the count follow a set's order). Module code run by an
import is left out. Only the project's own files count (``lightning_app/``, ``callbacks/``), less those that are
not on the checkpoint's path: the pure model, the data, logging, the progress bar and the wall clock.

Each thread's path is its modules in call order, consecutive repeats collapsed; the threads' paths are read one
after the other, in the order they first enter a project module (the training thread, then the writer it
starts, then the publisher the writer hands the checkpoint to). Interleaving the threads call by call, by the
clock, would make the count follow the scheduler: 32 to 35 returns on the way out in four runs. A *return* is
entering a module that was entered and left before: the path ``a b a c b`` has 3 modules and 2 returns. The
total reads the way back after the way out.

Usage (from the root of the checkout to measure; it imports the code found there)::

    python -m benchmarks.checkpoint_path
"""

from __future__ import annotations

import inspect
import runpy
import sys
import tempfile
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

from benchmarks.common import quiet, working_directory

SMOKE = Path("configs/smoke.yaml").resolve()
#: The project's files on the checkpoint's path: these folders, less the files below.
PROJECT = ("lightning_app/", "callbacks/")
NOT_ON_PATH = (
    "lightning_app/model/",
    "lightning_app/data/",
    "lightning_app/logging_setup.py",
    "callbacks/progress_bar.py",
    "callbacks/wall_clock.py",
)
GENERATOR = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class ModuleTrace:
    """A profile function for every thread: the project modules each thread enters between two marks.

    A mark is ``(module, function, event)``, e.g. ``("callbacks.checkpoint", "save_now", "call")``; without a
    ``start`` it records from the first call. Module names are relative to ``lightning_app/`` (``persistence.folder``).
    """

    def __init__(self, root: Path, start: tuple[str, str, str] | None, stop: tuple[str, str, str]) -> None:
        self.root, self.start, self.stop = root, start, stop
        self.recording, self.stopped = start is None, False
        self.paths: dict[threading.Thread, list[str]] = {}  # per thread, in the order threads first enter one
        self._module_of: dict[str, str | None] = {}  # file name -> module name; None: not on the path
        self._imports_open: dict[int, int] = defaultdict(int)  # thread -> frames of importlib on its stack
        self._generators: set = set()  # generator frames started (held, so that no other frame takes their id)

    def module_of(self, filename: str) -> str | None:
        if filename not in self._module_of:
            path = Path(filename)
            relative = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else ""
            on_path = relative.startswith(PROJECT) and not relative.startswith(NOT_ON_PATH)
            name = relative.removeprefix("lightning_app/").removesuffix(".py").removesuffix("/__init__")
            self._module_of[filename] = name.replace("/", ".") if on_path else None
        return self._module_of[filename]

    def __call__(self, frame, event: str, arg: object) -> None:
        if self.stopped or event not in ("call", "return"):
            return
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib"):  # an import runs module code: no step on the path
            self._imports_open[threading.get_ident()] += 1 if event == "call" else -1
            return
        module = self.module_of(code.co_filename)
        if module is None:
            return
        mark = (module, code.co_name, event)
        self.recording = self.recording or mark == self.start
        self.stopped = self.recording and mark == self.stop
        if event != "call" or not self.recording or self._imports_open[threading.get_ident()] > 0:
            return
        if code.co_flags & GENERATOR:  # entered when it starts; a resumption is control coming back, as a return
            if frame in self._generators:
                return
            self._generators.add(frame)
        self.paths.setdefault(threading.current_thread(), []).append(module)


def trace_command(argv: list[str], cwd: Path, trace: ModuleTrace) -> list[tuple[str, list[str]]]:
    """Run ``python -m lightning_app ARGV`` in ``cwd`` under ``trace``; each thread's path, repeats collapsed."""
    saved_argv, sys.argv = sys.argv, ["lightning_app", *argv]
    threading.setprofile(trace)
    sys.setprofile(trace)
    try:
        with working_directory(cwd), quiet():
            runpy.run_module("lightning_app", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        sys.argv = saved_argv
    if not trace.stopped:
        raise SystemExit(f"fit {' '.join(argv[1:])}: never reached {'.'.join(trace.stop[:2])} ({trace.stop[2]})")
    names = [thread.name for thread in trace.paths]
    return [
        (f"{name} {names[:i].count(name) + 1}" if names.count(name) > 1 else name, collapse(path))
        for i, (name, path) in enumerate(zip(names, trace.paths.values()))
    ]


def collapse(modules: list[str]) -> list[str]:
    return [module for i, module in enumerate(modules) if i == 0 or modules[i - 1] != module]


def counts(paths: list[tuple[str, list[str]]]) -> tuple[int, int]:
    """(distinct modules, returns) of the threads' paths one after the other: once consecutive repeats are
    collapsed, every module seen again is a return."""
    modules = collapse([module for _thread, path in paths for module in path])
    return len(set(modules)), len(modules) - len(set(modules))


def show(name: str, paths: list[tuple[str, list[str]]]) -> None:
    modules, returns = counts(paths)
    print(f"\n{name}: {modules} modules, {returns} returns")
    for thread, path in paths:
        text = f"{thread} ({len(path)}): " + " > ".join(path)
        print(textwrap.fill(text, width=118, initial_indent="  ", subsequent_indent="      "))


def main() -> None:
    import lightning_app

    root = Path(lightning_app.__file__).parents[1]  # the checkout whose code is imported
    with tempfile.TemporaryDirectory(prefix="checkpoint-path-") as tmp:
        store, out, back = (Path(tmp) / name for name in ("store", "out", "back"))
        for folder in (store, out, back):
            folder.mkdir()
        fit = ["fit", "--config", str(SMOKE), "--trainer.enable_progress_bar", "false", "--sync.directory", str(store)]
        saved = ModuleTrace(
            root, ("callbacks.checkpoint", "save_now", "call"), ("callbacks.kaggle_sync", "flush", "return")
        )
        way_out = trace_command([*fit, "--trainer.max_epochs", "1"], out, saved)
        # A second epoch to train, or Lightning sees the run finished and never starts training.
        resumed = ModuleTrace(root, None, ("module", "on_train_start", "return"))
        way_back = trace_command([*fit, "--trainer.max_epochs", "2", "--resume"], back, resumed)
    print(f"The checkpoint's path through the modules of {root} (names relative to lightning_app/)")
    show("Way out (save_now -> the published version)", way_out)
    show("Way back (fit --resume -> on_train_start)", way_back)
    modules, returns = counts(way_out + way_back)
    print(f"\nTotal (out, then back): {modules} modules, {returns} returns")


if __name__ == "__main__":
    main()
