"""A real English corpus that every Python ships: the reference text behind ``help()`` (``pydoc_data.topics``).

About 0.47 MB of prose and examples from Python's own documentation, written by the Python developers, under the
Python Software Foundation License (the same licence as the interpreter that carries it). Nothing is downloaded::

    python -m lightning_app.data.corpus data/python_docs.txt
    python -m lightning_app fit --config configs/text.yaml --data.path data/python_docs.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "pydoc_data.topics (Python documentation)"
LICENSE = "Python Software Foundation License"


def corpus_text() -> str:
    """The topics in a fixed order (sorted by name), separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def write_corpus(path: str | Path) -> Path:
    """Write the corpus as UTF-8 to ``path`` (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(corpus_text(), encoding="utf-8")
    return path


if __name__ == "__main__":
    target = write_corpus(sys.argv[1] if len(sys.argv) > 1 else "data/python_docs.txt")
    print(f"{target}: {target.stat().st_size / 1e6:.2f} MB of {NAME}, {LICENSE}")
