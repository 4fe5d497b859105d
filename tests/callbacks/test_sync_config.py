"""``--sync`` settings that cannot work are refused at once, in one line naming the option, value and rule."""

from __future__ import annotations

import pytest

from callbacks.kaggle_sync import KaggleDatasetSync
from lightning_app.errors import ConfigError


@pytest.mark.parametrize(
    "dataset",
    ["no-slash-here", "alice/short", "alice/Upper-Case-Slug", "alice/has_underscore", "alice/" + "x" * 51, "/abcdefg"],
)
def test_dataset_must_follow_the_slug_rule(dataset):
    with pytest.raises(ConfigError) as caught:
        KaggleDatasetSync(dataset=dataset)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--sync.dataset: got {dataset!r}; expected OWNER/SLUG")
    assert "6 to 50 lower-case letters, digits or '-'" in message


@pytest.mark.parametrize("dataset", ["alice/rope-small-checkpoints", "Some_User/abc123", "a/" + "x" * 50])
def test_valid_datasets_are_accepted(dataset):
    assert KaggleDatasetSync(dataset=dataset).dataset == dataset
