"""The HTTP API of the job service (FastAPI). ``create_app(settings, store)`` builds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spaceport.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # imported on first use: `spaceport jobs` imports only spaceport.api.schemas, not FastAPI and the job store
    if name == "create_app":
        from spaceport.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
