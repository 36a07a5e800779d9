"""Progress of COLMAP's extraction and matching, read from the rows it writes into its database."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def count_rows(database: Path, table: str) -> int | None:
    """Rows COLMAP has written so far, or None while they cannot be read.

    ``nolock=1``: our reader takes no lock, because COLMAP aborts the whole process ("database is locked") when
    one of its writes meets a reader's lock; a count read during a write may be off, which a progress bar can bear.
    """
    try:
        with sqlite3.connect(f"file:{database}?mode=ro&nolock=1", uri=True, timeout=0.2) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return None


@contextmanager
def poll_database(task: Any, database: Path, table: str) -> Iterator[None]:
    """COLMAP gives no callback for extraction/matching: follow the rows it writes instead."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            count = count_rows(database, table)
            if count is not None:
                task.update(completed=count)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
