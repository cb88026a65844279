"""engine.train.malloc: a training process keeps its freed memory (glibc), and the switch to compare."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.config import REPO

ASK = "from engine.train.malloc import keep_freed_memory; print(keep_freed_memory())"


def ask(env_value: str | None) -> str:
    """keep_freed_memory() in a fresh process (it changes the process's malloc: not this one's)."""
    env = {k: v for k, v in os.environ.items() if k != "CONCEPTSCAPE_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["CONCEPTSCAPE_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", ASK], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return False


@pytest.mark.skipif(not glibc(), reason="mallopt is glibc's")
def test_glibc_takes_the_settings_unless_switched_off():
    assert ask(None) == "True"
    assert ask("0") == "False"
