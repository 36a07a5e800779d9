"""The child process that runs one stage of one job, so that a stage that crashes or has to be killed never takes
the API or the worker down.

Children are forked by a multiprocessing *forkserver* that imported the stages once (``spaceport.pipeline``: torch,
pycolmap, ... take 5-15 s to import on a busy machine), so a stage starts in well under a second. The forkserver
has imported nothing else and started no thread, which keeps forking it safe. Each child starts its own session
(its supervisor stops it and whatever it started with one signal), sends its output to the workspace's
``logs/<stage>.out``, and asks the kernel for SIGTERM when its parent dies (the train stage then checkpoints and
stops). The outcome goes to a JSON file and into the exit status.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spaceport.settings import Settings

EXIT_CODES = {"succeeded": 0, "failed": 10, "cancelled": 11, "interrupted": 12, "busy": 13, "skipped": 14}
EXIT_ORPHANED = 15
PR_SET_PDEATHSIG = 1
PRELOAD = ["spaceport.pipeline", "spaceport.jobs.runner", "spaceport.jobs.events", "spaceport.jobs.store",
           "spaceport.jobs.forkserver_init"]

_context: BaseContext | None = None
_context_lock = threading.Lock()


def stage_process_context() -> BaseContext:
    """The forkserver context stage processes are started from (its server is started on first use)."""
    global _context
    with _context_lock:
        if _context is None:
            # read by OpenMP when torch is imported in the forkserver: spin-waiting threads slow a shared machine
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


def warm_up() -> None:
    """Start the forkserver now (it imports the stages), so the first stage does not wait for it."""
    from multiprocessing import forkserver

    stage_process_context()
    forkserver.ensure_running()


def die_with_parent() -> bool:
    """SIGTERM this process when its parent (the forkserver, which ends with its worker) ends (Linux); False
    when the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() != 1


def _release_forkserver() -> None:
    """Close this child's copy of the forkserver's keep-alive pipe: multiprocessing hands one to every child so the
    forkserver outlives its worker while children run, which would keep our children running after their worker
    was killed. Without it the forkserver ends with the worker, and ``die_with_parent`` ends this child."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        os.close(alive_fd)
        server._forkserver_alive_fd = None


def _send_output_to(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_stage_process(job_id: str, stage: str, worker_id: str, result_path: str, settings: Settings,
                      output_path: str, env: dict[str, str] | None = None) -> None:
    """The child's body (a multiprocessing target): run the stage, write the outcome, exit with its code.

    ``env`` (its slot's ``CUDA_VISIBLE_DEVICES``) is set first: CUDA reads it when it starts, which the forkserver
    never does, so the stage sees only its slot's GPU."""
    os.environ.update(env or {})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forkserver ignores it (spaceport.jobs.forkserver_init)
    os.setsid()
    _send_output_to(Path(output_path))
    _release_forkserver()
    if not die_with_parent():
        sys.exit(EXIT_ORPHANED)

    from spaceport.formats.atomic import atomic_write_json
    from spaceport.jobs.runner import run_job_stage
    from spaceport.jobs.store import open_store

    store = open_store(settings.resolved_database_url)
    try:
        outcome = run_job_stage(settings, store, job_id, stage, worker_id)
    finally:
        store.close()
    atomic_write_json(result_path, outcome.to_json())
    sys.stdout.flush()
    sys.exit(EXIT_CODES[outcome.kind])
