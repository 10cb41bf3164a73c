"""A module of this repository as it was at a commit: the reference a differential test
compares the code that replaced it with."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pinned(commit: str, path: str) -> Any:
    """``path`` (a module of this repository) as it was at ``commit``, as a module."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to read the reference")
    done = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"the reference {path} ({commit}) is not in this checkout")
    name = "pinned_" + commit.replace("^", "_") + "_" + path.replace("/", "_")[:-3]
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses and typing look their module up
    exec(compile(done.stdout, f"{commit}:{path}", "exec"), module.__dict__)
    return module
