"""The direction of imports that docs/architecture.md describes, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spaceport"
STAGES = ("ingest", "sfm", "splat", "compress", "report")
ENTRY_POINTS = ("spaceport.cli", "spaceport.api", "spaceport.jobs", "spaceport.pipeline", "spaceport.presets")


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """{file: every spaceport module it imports}, for each .py file under ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(PACKAGE.parent))] = {n for n in names if n.startswith("spaceport")}
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage_and_no_entry_point(stage: str) -> None:
    forbidden = [f"spaceport.{other}" for other in STAGES if other != stage] + list(ENTRY_POINTS)
    for path, modules in imported_modules(PACKAGE / stage).items():
        bad = [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]
        assert not bad, f"{path} imports {bad}"


def test_formats_import_only_formats_and_errors() -> None:
    for path, modules in imported_modules(PACKAGE / "formats").items():
        bad = [m for m in modules if not (m.startswith("spaceport.formats") or m == "spaceport.errors")]
        assert not bad, f"{path} imports {bad}"
