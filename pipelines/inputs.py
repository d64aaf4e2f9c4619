"""The job's input files, the same for every engine: which suffixes are telemetry and which
files a path, a directory or a glob names."""

from __future__ import annotations

import glob
import os

INPUT_SUFFIXES = (".ndjson", ".jsonl", ".json", ".parquet")


def expand_inputs(pattern: str) -> list[str]:
    """Files named by a path, a directory or a glob; a clear error when there are none."""
    if os.path.isdir(pattern):
        paths = [os.path.join(pattern, n) for n in os.listdir(pattern) if n.endswith(INPUT_SUFFIXES)]
    else:
        paths = glob.glob(pattern)
    if not paths:
        raise FileNotFoundError(f"no telemetry files match {pattern!r}")
    return sorted(paths)
