"""Transformer language models that survive the end of a Kaggle session.

`python -m lightning_app fit --resume` trains, checkpoints every epoch, publishes each checkpoint as a Kaggle
Dataset version in the background, and at the start of the next session resumes exactly where it stopped.
"""

import time

#: When this package was first imported (epoch seconds): a process's start where ``/proc`` cannot tell
#: (`lightning_app.session.process_start`).
IMPORTED_AT = time.time()

__version__ = "0.1.0"
