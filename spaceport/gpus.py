"""Which GPUs this machine shows, ``--gpus all|none|0,1`` (``SPACEPORT_GPUS``), and the worker slots made of them.

Discovery never initialises CUDA in the calling process (a worker that forks stage processes must not have
CUDA started, and the API process should not pay for it). It reads, in this order:

1. ``CUDA_VISIBLE_DEVICES`` when it is set: its entries are the visible GPUs, in its order (an empty value or a
   negative index hides every GPU, as CUDA does). When ``nvidia-smi`` is installed, entries it does not know end
   the list, as CUDA ends it at the first invalid entry, and the GPUs get their names from it.
2. ``nvidia-smi --query-gpu=index,uuid,name``: every GPU of the machine, numbered as ``nvidia-smi`` numbers them
   (PCI bus order; slot processes get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA numbers them the same way).
3. ``/proc/driver/nvidia/gpus/`` (the driver is loaded but ``nvidia-smi`` is not installed), PCI bus order too.

No GPU found: none is visible. ``--gpus`` takes indices as this process would see them (torch's ``cuda:N``; with
``CUDA_VISIBLE_DEVICES`` set, positions in it). A slot is one lane of work of a worker: one stage at a time,
pinned to one GPU by its ``CUDA_VISIBLE_DEVICES``; with no GPU, one slot runs the gpu stages on the CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spaceport.errors import SpaceportError

NVIDIA_SMI_TIMEOUT_S = 20.0
PROC_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Gpu:
    index: int  # cuda:<index> in a process that sees every visible GPU
    cuda_id: str  # the CUDA_VISIBLE_DEVICES value that shows this GPU alone ("1", "GPU-8f2c...")
    name: str | None = None  # "NVIDIA H200", when the driver tells

    def describe(self) -> str:
        return f"{self.index} ({self.name})" if self.name else str(self.index)


@dataclass(frozen=True)
class GpuInventory:
    gpus: list[Gpu]
    source: str  # where the list came from, or why it is empty (shown in messages)
    pci_order: bool = False  # indices are nvidia-smi's (PCI bus order): pinned processes need CUDA_DEVICE_ORDER

    def describe(self) -> str:
        if not self.gpus:
            return f"no GPU is visible ({self.source})"
        return f"visible GPUs: {', '.join(gpu.describe() for gpu in self.gpus)} (from {self.source})"


@dataclass(frozen=True)
class Slot:
    """One stage at a time; ``env`` goes into the environment of the processes that run its stages."""

    name: str  # "gpu0", "gpu1"; "cpu0" for a slot without a GPU
    resource: str = "gpu"  # the stage resource class it runs: "gpu" | "cpu"
    env: dict[str, str] = field(default_factory=dict)
    gpu: Gpu | None = None

    def describe(self) -> str:
        if self.gpu is not None:
            pinned = ", ".join(f"{name}={value}" for name, value in self.env.items())
            return f"{self.name} (GPU {self.gpu.describe()}, {pinned})"
        if self.resource == "gpu":
            hidden = "; CUDA_VISIBLE_DEVICES= hides the GPUs" if "CUDA_VISIBLE_DEVICES" in self.env else ""
            return f"{self.name} (no GPU: gpu stages run on the CPU{hidden})"
        return self.name


# -- discovery --------------------------------------------------------------------------------------------------


def visible_gpus(environ: Mapping[str, str] | None = None) -> GpuInventory:
    """The GPUs a process with this environment would see (see the module docstring); starts no CUDA."""
    environ = os.environ if environ is None else environ
    listed, listed_from = _driver_gpus()
    mask = environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        if not listed:
            return GpuInventory([], listed_from)
        return GpuInventory([Gpu(i, cuda_id, name) for i, (cuda_id, _uuid, name) in enumerate(listed)], listed_from,
                            pci_order=True)
    gpus = []
    for entry in _mask_entries(mask):
        match = _find(entry, listed) if listed_from == "nvidia-smi" else None
        if listed_from == "nvidia-smi" and match is None:
            break  # CUDA ignores this entry and every one after it
        gpus.append(Gpu(len(gpus), entry, match[2] if match else None))
    return GpuInventory(gpus, f"CUDA_VISIBLE_DEVICES={mask}" + (", nvidia-smi" if listed_from == "nvidia-smi"
                                                                 else ""))


def _mask_entries(mask: str) -> list[str]:
    entries = []
    for raw in mask.split(","):
        entry = raw.strip()
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break
        entries.append(entry)
    return entries


def _find(entry: str, listed: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The GPU a CUDA_VISIBLE_DEVICES entry names: an index, or a (prefix of a) GPU-/MIG- UUID."""
    if entry.isdigit():
        index = int(entry)
        return listed[index] if index < len(listed) else None
    return next((gpu for gpu in listed if gpu[1].startswith(entry)), None)


def _driver_gpus() -> tuple[list[tuple[str, str, str]], str]:
    """(index, uuid, name) of every GPU of the machine, and where they came from or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run([smi, "--query-gpu=index,uuid,name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [], f"nvidia-smi failed: {exc}"
        if done.returncode != 0:
            return [], f"nvidia-smi failed: {(done.stdout + done.stderr).strip()[:200]}"
        rows = [[part.strip() for part in line.split(",", 2)] for line in done.stdout.splitlines() if line.strip()]
        return [(row[0], row[1], row[2]) for row in rows if len(row) == 3], "nvidia-smi"
    if PROC_GPUS.is_dir():
        gpus = []
        for index, folder in enumerate(sorted(PROC_GPUS.iterdir())):
            gpus.append((str(index), "", _proc_model(folder / "information")))
        if gpus:
            return gpus, str(PROC_GPUS)
    return [], "no nvidia-smi, no NVIDIA driver loaded"


def _proc_model(information: Path) -> str:
    try:
        for line in information.read_text().splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "NVIDIA GPU"


# -- --gpus -----------------------------------------------------------------------------------------------------


def select_gpus(spec: str, inventory: GpuInventory, option: str = "--gpus") -> list[Gpu]:
    """``all`` (every visible GPU; none when none is), ``none``, or indices ``0,1``; a SpaceportError otherwise."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(inventory.gpus)
    if spec == "none":
        return []
    parts = [part.strip() for part in spec.split(",")]
    if not spec or not all(part.isdigit() for part in parts):
        raise SpaceportError(f"{option} {spec!r}: give all, none, or GPU indices such as 0,1; {inventory.describe()}")
    indices = [int(part) for part in parts]
    if len(set(indices)) != len(indices):
        raise SpaceportError(f"{option} {spec}: a GPU is named twice; one slot per GPU")
    missing = [index for index in indices if index >= len(inventory.gpus)]
    if missing:
        which = ", ".join(str(index) for index in missing)
        raise SpaceportError(f"{option} {spec}: no GPU {which} here; {inventory.describe()}. Use {option} all, "
                             f"{option} none (the CPU), or indices of the visible GPUs")
    return [inventory.gpus[index] for index in indices]


def gpu_slots(spec: str, inventory: GpuInventory | None = None, *, cpu_slots_without_gpu: int = 1,
              option: str = "--gpus") -> list[Slot]:
    """One slot per selected GPU, pinned to it; with no GPU, ``cpu_slots_without_gpu`` slots that run the gpu
    stages on the CPU (``none`` hides the GPUs from them; ``all`` on a machine without any leaves CUDA alone)."""
    inventory = visible_gpus() if inventory is None else inventory
    gpus = select_gpus(spec, inventory, option)
    if gpus:
        order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if inventory.pci_order else {}
        return [Slot(f"gpu{gpu.index}", "gpu", {"CUDA_VISIBLE_DEVICES": gpu.cuda_id, **order}, gpu) for gpu in gpus]
    hide = {"CUDA_VISIBLE_DEVICES": ""} if spec.strip().lower() == "none" else {}
    return [Slot(f"cpu{index}", "gpu", dict(hide)) for index in range(cpu_slots_without_gpu)]
