"""Which torch device a stage runs on, and how that device is named in stage runs and reports."""

from __future__ import annotations

import os
from typing import Any

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


def device_label(device: torch.device) -> str:
    """"cuda:0 (NVIDIA H200, physical GPU 1)" (the physical GPU: its CUDA_VISIBLE_DEVICES entry), or "cpu"."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    parts = [torch.cuda.get_device_name(index)]
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        entries = [entry.strip() for entry in mask.split(",")]
        if index < len(entries):
            parts.append(f"physical GPU {entries[index]}")
    return f"cuda:{index} ({', '.join(parts)})"


def describe_device(stage_config: Any) -> str:
    """Where a stage with this config runs: its ``device`` resolved and labelled; "cpu" for a stage without one
    (and the requested name when it cannot be had: the stage itself fails with the message)."""
    requested = getattr(stage_config, "device", None)
    if requested is None:
        return "cpu"
    try:
        return device_label(resolve_device(requested))
    except SpaceportError:
        return str(requested)
