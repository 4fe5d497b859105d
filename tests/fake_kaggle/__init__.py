"""A fake Kaggle API server that the real ``kaggle`` client talks to over HTTP on 127.0.0.1."""

from tests.fake_kaggle.server import SITE_DIR, UNSET_VARS, FakeKaggle, RequestRecord

__all__ = ["SITE_DIR", "UNSET_VARS", "FakeKaggle", "RequestRecord"]
