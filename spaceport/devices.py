"""Which torch device a stage runs on."""

from __future__ import annotations

import torch

from spaceport.errors import SpaceportError


def resolve_device(requested: str, what: str = "spaceport") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for ``cuda`` without CUDA is a user error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpaceportError(f"{what}: device 'cuda' was asked for but CUDA is not available; "
                             "use device 'auto' or 'cpu'")
    return torch.device(requested)
