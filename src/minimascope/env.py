"""Facts about where a run goes: the device, library versions, the processor, memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from minimascope.errors import MinimascopeError
from minimascope.version import __version__


def resolve_device(name: str) -> torch.device:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MinimascopeError(f"device {name} asked for, but torch sees no CUDA device")
    return torch.device(name)


def cpu_name() -> str:
    """The processor's model name, for run records and benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device of a run, as its ``run.json`` records them."""
    import numpy
    import torchvision

    info: dict[str, Any] = {
        "versions": {"minimascope": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__},
        "device": {"type": device.type, "threads": torch.get_num_threads(), "machine": platform.machine(),
                   "processor": cpu_name()},
    }
    if device.type == "cuda":
        info["device"]["name"] = torch.cuda.get_device_name(device)
        info["versions"]["cuda"] = torch.version.cuda
    return info
