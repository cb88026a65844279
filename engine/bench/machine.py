"""What every benchmark result records about the machine it was measured on."""
from __future__ import annotations

import platform

import torch


def machine() -> dict:
    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
