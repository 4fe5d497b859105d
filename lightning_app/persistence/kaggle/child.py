"""The child process of one Kaggle call: ``python -m lightning_app.persistence.kaggle.child <operation> <args.json>
<result.json>``.

The ``kaggle`` client has no timeouts and a thread stuck in it cannot be cancelled (a late CreateDatasetVersion
could even publish after a newer version), so the parent (`calls.ChildCalls`) runs every call in a process of its
own and kills it when its time is up. This process logs in, runs one operation of `operations.OPERATIONS`, and
writes a `CallResult` (whole or not at all); the client's stdout chatter ("Dataset URL: ...") goes nowhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle.client import connect
from lightning_app.persistence.kaggle.errors import failure_for_parent
from lightning_app.persistence.kaggle.operations import OPERATIONS
from lightning_app.persistence.kaggle.outcomes import CallFailed, CallResult, FailureKind, Operation

#: An upload yields the CPU to training (its hashing and TLS compete with the training threads otherwise).
NICENESS = 10


def run(operation: str, args: dict[str, Any]) -> CallResult:
    """Log in and do one operation; never raises (every failure is a `CallResult`)."""
    api = None
    try:
        try:
            handler = OPERATIONS[Operation(operation)]
        except (ValueError, KeyError):
            known = ", ".join(op.value for op in OPERATIONS)
            raise CallFailed(FailureKind.ERROR, f"unknown operation {operation!r}; expected one of {known}") from None
        api = connect()
        return CallResult(True, handler(api, args))
    except BaseException as error:  # noqa: BLE001 - SystemExit from the client is a failure like any other
        if isinstance(error, KeyboardInterrupt):
            raise
        return CallResult.failed(failure_for_parent(error, api))


def main(argv: list[str] | None = None) -> int:
    operation, args_path, result_path = (sys.argv[1:] if argv is None else argv)[:3]
    result = run(operation, json.loads(Path(args_path).read_text()))
    tmp = Path(f"{result_path}.tmp")
    tmp.write_text(json.dumps(result.to_json()))
    os.replace(tmp, result_path)  # the parent sees a whole result or none
    return 0


if __name__ == "__main__":
    os.nice(NICENESS)
    sys.exit(main())
