"""An experiment's name, derived from what makes two runs different experiments (model and data)."""

import hashlib
import json


def experiment_name(settings: dict[str, object], data_identity: dict[str, object]) -> str:
    """``rope-small-1a2b3c4d``: readable, and different whenever the architecture or the data differ.

    Training knobs (epochs, learning rate, batch size) are left out on purpose: changing them and resuming
    continues the same experiment.
    """
    blob = json.dumps({"model": settings, "data": data_identity}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    return f"{settings.get('pe_type', 'lm')}-{settings.get('model_size', 'custom')}-{digest}"
