"""Reading and writing the workspace's JSON files as typed models, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_bytes

Model = TypeVar("Model", bound=BaseModel)


def read_model(path: Path, model: type[Model], fix: str) -> Model:
    """``path`` parsed as ``model``; a missing or invalid file is a SpaceportError naming it and ``fix``."""
    if not path.exists():
        raise SpaceportError(f"{path}: missing; {fix}")
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()[:3])
        raise SpaceportError(f"{path}: not a valid {model.__name__} file ({problems}); {fix}") from exc


def write_model(path: Path, value: BaseModel) -> None:
    atomic_write_bytes(path, (value.model_dump_json(indent=2) + "\n").encode())


def read_json_lines(path: Path, model: type[Model], fix: str) -> list[Model]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(model.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            raise SpaceportError(f"{path}:{number}: not a valid {model.__name__} line ({exc}); {fix}") from exc
    return rows
