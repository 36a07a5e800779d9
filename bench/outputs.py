"""Where a bench script's JSON goes: the path asked for, and $OUT on the lent GPU machine (what comes back)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_result(result: dict[str, Any], path: Path | None, name: str) -> None:
    """``result`` as JSON at ``path`` (when given) and at ``$OUT/name`` (when $OUT is set)."""
    targets = [path] + ([Path(os.environ["OUT"]) / name] if os.environ.get("OUT") else [])
    for target in filter(None, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n")
