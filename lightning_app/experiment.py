"""An experiment's name, derived from what makes two runs different experiments (model and data)."""

import hashlib
import json
import re

from lightning_app.errors import bad_value

#: The settings a checkpoint must share with the run that resumes it (written into every manifest entry); the
#: integer ones are `lightning_app.model.TransformerConfig` fields. Kept here, torch-free, so ``plot`` can read it.
ARCHITECTURE_KEYS = ("pe_type", "model_size", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")

#: A run's name as ``fit --name`` takes it: a log folder and the start of a dataset slug.
_RUN_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")

#: Logged once per validation: seconds of training so far, summed over every session of the run.
WALL_TIME_KEY = "wall_time"


def experiment_name(settings: dict[str, object], data_identity: dict[str, object]) -> str:
    """``rope-small-1a2b3c4d``: readable, and different whenever the architecture or the data differ.

    Training knobs (epochs, learning rate, batch size) are left out on purpose: changing them and resuming
    continues the same experiment.
    """
    blob = json.dumps({"model": settings, "data": data_identity}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    return f"{settings.get('pe_type', 'lm')}-{settings.get('model_size', 'custom')}-{digest}"


def check_run_name(option: str, name: str) -> str:
    """``name`` when it can name a run's log folder and dataset (1-50 lower-case letters, digits and inner '-');
    else a `ConfigError` naming ``option``."""
    if not _RUN_NAME.match(name):
        raise bad_value(option, name, "1 to 50 lower-case letters, digits or '-' (not first or last)")
    return name
