"""A traffic worker raises its soft limit of open files to the hard limit at start
(gateway/worker.py): each message may hold two descriptors, client and bot."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

CHILD = """
import logging, resource
logging.basicConfig(level=logging.INFO, format="%(message)s")
from gateway.worker import raise_open_files
got = raise_open_files()
print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit to raise to")
    low = min(256, hard)

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        preexec_fn=lowered,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [str(hard)] * 3
    if low < hard:
        assert f"open files limit raised from {low} to {hard}" in out.stderr
