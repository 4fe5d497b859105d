"""An experiment's name, derived from what makes two runs different experiments (model and data)."""

import hashlib
import json

#: The settings a checkpoint must share with the run that resumes it (written into every manifest entry); the
#: integer ones are `lightning_app.model.TransformerConfig` fields. Kept here, torch-free, so ``plot`` can read it.
ARCHITECTURE_KEYS = ("pe_type", "model_size", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")

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
