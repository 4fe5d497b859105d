"""Benchmarks of the project against plain PyTorch and stock Lightning, each a command that prints a table.

``python -m benchmarks.<name> [--quick] [--device auto|cpu|cuda]``, ``<name>`` one of ``throughput``,
``checkpoint_stall``, ``upload_volume``, ``restore_time``. See ``benchmarks/README.md`` for the latest results.
"""
