"""Test-only start-up hook: point ``kagglesdk`` at the fake Kaggle server named by ``FAKE_KAGGLE_URL``.

Python imports ``sitecustomize`` at start-up from ``sys.path``; ``FakeKaggle.env()`` puts this folder first on
``PYTHONPATH``, so every child process of a test (the training CLI, the store's per-call processes) reaches the
fake with no test hook in production code. With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` kagglesdk reads
``kaggle_env._env_to_endpoint[KaggleEnv.LOCAL]`` when each client is built; rebinding ``get_endpoint`` would not
work, since ``kaggle_http_client`` imported that name before any patch.

kagglesdk is not imported here (that costs ~0.2 s per process): the table is patched right after the module
``kagglesdk.kaggle_env`` is first executed. Any other ``sitecustomize`` further along ``sys.path`` still runs.
"""

import importlib.machinery
import importlib.util
import os
import sys

_TARGET = "kagglesdk.kaggle_env"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _patch(module):
    module._env_to_endpoint[module.KaggleEnv.LOCAL] = os.environ["FAKE_KAGGLE_URL"]


class _PatchAfterImport:
    """A meta-path finder that only wraps the loader of ``kagglesdk.kaggle_env``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module, _run=run):
                    _run(module)
                    _patch(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def _run_next_sitecustomize():
    """Keep whatever sitecustomize this one shadows (e.g. a distribution's)."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("FAKE_KAGGLE_URL"):
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    else:
        sys.meta_path.insert(0, _PatchAfterImport())
_run_next_sitecustomize()
