"""Cache keys that change with the code: a hash of source files, found by glob."""

from __future__ import annotations

import glob
import hashlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def code_hash(*patterns: str) -> str:
    """SHA-256 over the contents of the files matching ``patterns`` (relative to the repository
    root, each pattern's matches in sorted order); a pattern matching nothing is an error, so
    that a moved file cannot silently drop out of a cache key."""
    h = hashlib.sha256()
    for pattern in patterns:
        paths = sorted(glob.glob(os.path.join(REPO, pattern)))
        if not paths:
            raise FileNotFoundError(f"no source file matches {pattern!r} under {REPO}")
        for path in paths:
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()
