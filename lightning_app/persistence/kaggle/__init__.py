"""A private Kaggle Dataset as a checkpoint store, and the kernel calls of a launched chain, split by the process the
code runs in.

This process (the parent): ``store.py`` (`KaggleDatasetStore`), ``kernels.py`` (`KaggleKernels`: push a script
kernel, read its sessions' status), ``quota.py`` (the weekly GPU quota), ``calls.py`` (each call a bounded, killable
child process), ``credentials.py`` (which credential the client will use; never the key), ``names.py`` (what Kaggle
accepts), ``archive.py`` (unpacking a downloaded zip). The child process of one call: ``child.py`` (its entry),
``operations.py`` (the operations, in one table), ``client.py`` (logging in, and the differences between client
generations), ``errors.py`` (reading the client's failures). Both sides share ``outcomes.py``.
"""
