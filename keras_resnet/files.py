"""File helpers every floor uses: atomic writes, strict JSON, the CSV history."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_dead_temporaries(directory: str | os.PathLike, prefix: str) -> None:
    """Remove `directory/<prefix><pid>-*` entries left by processes that no longer run
    (killed mid-write: SIGKILL, power loss)."""
    for stale in Path(directory).glob(f"{prefix}*"):
        try:
            os.kill(int(stale.name[len(prefix) :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def strict(obj):
    """`obj` with every NaN/inf float (Python or NumPy) replaced by None, so that it is
    valid JSON for strict parsers (Python's json writes a bare `NaN` otherwise)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text of `obj` (see `strict`)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path, obj) -> None:
    write_atomic(path, dumps(obj, indent=2) + "\n")


def read_json(path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_history_csv(path, history: dict[str, list]) -> None:
    keys = sorted(history)
    rows = zip(*(history[k] for k in keys))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", *keys])
    for epoch, row in enumerate(rows, 1):
        writer.writerow([epoch, *("" if v is None else v for v in row)])
    write_atomic(path, buffer.getvalue())
