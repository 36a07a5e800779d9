"""Writing files and folders so that readers (and a resumed run) never see half of one.

A file is written to a temporary sibling, flushed to disk and renamed over the target; a folder is built as a
temporary sibling and renamed into place when complete. Both keep the usual permissions (the umask applies).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PARTIAL = ".partial-"  # infix of the temporary siblings; leftovers of a killed run are removed on the next try


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before worker threads exist
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_write_to(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``path`` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write_to(path) as file:
        file.write(data)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


@contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary folder beside ``final`` that replaces it when the block ends without error.

    Leftover temporary folders of an earlier, killed attempt are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for leftover in final.parent.glob(f".{final.name}{PARTIAL}*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}{PARTIAL}"))
    try:
        staging.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; outputs are ordinary folders
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
