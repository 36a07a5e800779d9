"""``spaceport serve``: the API (uvicorn) plus who runs the jobs.

Without a broker: the embedded worker pool (``spaceport.jobs.embedded``) in this process, stages in child
processes; SQLite under the data folder unless ``SPACEPORT_DATABASE_URL`` says otherwise. With
``SPACEPORT_BROKER_URL``: the API only records jobs and sends their first stage to Celery; a reaper thread sends
stale work again (``spaceport.jobs.celery_app``).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any, Protocol

from spaceport.jobs.store import open_store
from spaceport.settings import Settings


class Background(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _stop_on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def serve(settings: Settings, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT / SIGTERM, then stop the workers cleanly (their jobs go back to the queue)."""
    import uvicorn

    from spaceport.api.app import create_app

    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}"
    if "public_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"public_url": url})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.resolved_database_url)
    background: Background
    if settings.broker_url:
        from spaceport.jobs.celery_app import CeleryDispatcher, Reaper, make_celery
        from spaceport.jobs.supervise import WorkerContext, make_worker_id

        dispatcher: Any = CeleryDispatcher(make_celery(settings), settings)
        background = Reaper(WorkerContext(settings, store, make_worker_id("api")), dispatcher)
    else:
        from spaceport.jobs.embedded import EmbeddedPool

        dispatcher = background = EmbeddedPool(settings, store)
    app = create_app(settings, store, dispatcher=dispatcher)
    # uvicorn restores this handler after its graceful shutdown and re-raises the signal into it: SystemExit then
    # unwinds through the finally below (the default action would end the process before the workers stop)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    background.start()
    try:
        announce(url)
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        background.close()
        if hasattr(dispatcher, "redis"):
            dispatcher.close()
        store.close()
