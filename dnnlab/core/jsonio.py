"""JSON files written atomically and read forgivingly: a kill never leaves half a file, and a file
cut by one reads as missing. JSON holds no infinities: inf is the string "inf"."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from dnnlab.core.table import jsonable


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temp file, then a rename: a crash never leaves half a file);
    an OSError names `path`."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False))
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable (a file cut by a kill)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
