"""Transformer language models that survive the end of a Kaggle session.

`python -m lightning_app fit --resume` trains, checkpoints every epoch, publishes each checkpoint as a Kaggle
Dataset version in the background, and at the start of the next session resumes exactly where it stopped.
"""

import time

#: When this process started (monotonic seconds): the per-session time budget counts from here.
PROCESS_START = time.monotonic()

__version__ = "0.1.0"
