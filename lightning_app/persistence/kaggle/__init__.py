"""A private Kaggle Dataset as a checkpoint store, split by the process the code runs in.

This process (the parent): ``store.py`` (`KaggleDatasetStore`), ``calls.py`` (each call a bounded, killable child
process), ``credentials.py`` (which credential the client will use; never the key), ``names.py`` (what Kaggle
accepts), ``archive.py`` (unpacking a downloaded zip). The child process of one call: ``child.py`` (its entry),
``operations.py`` (the operations, in one table), ``client.py`` (logging in, and the differences between client
generations), ``errors.py`` (reading the client's failures). Both sides share ``outcomes.py``.
"""
