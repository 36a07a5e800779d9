"""The errors a user can act on."""

from __future__ import annotations


class SpaceportError(Exception):
    """An error the user can act on: the message names the file and the fix. No traceback is shown."""

    exit_code = 2


class WorkspaceBusy(SpaceportError):
    """Another live process holds the workspace lock."""

    exit_code = 3
