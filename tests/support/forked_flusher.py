"""Flusher processes forked from an interpreter that imported ``gateway.flusher_cli``
once (multiprocessing's forkserver), for tests that start dozens of them.

Each is a process of its own running ``gateway.flusher_cli.main`` with its own
environment, working directory, stdout and stderr, killed and reaped by pid as a
``python -m gateway.flusher_cli`` child would be; only the imports are not repeated. A
fresh interpreter had spent 0.56-0.81 s of CPU when killed after its readiness line (the
imports: pydantic, redis, the store), a forked one 0.20-0.36 s: about 50 s of the
suite's CPU over the crash test's 100-odd restarts. The server lives as long as the
pytest process that started it (one per xdist worker).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["gateway.flusher_cli"])


def _main(env: dict[str, str], cwd: str, out: str, err: str, argv: list[str]) -> None:
    """In the child: the environment, directory and output of a subprocess, then main."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    from gateway import flusher_cli

    sys.exit(flusher_cli.main(argv))


class ForkedFlusher:
    """One flusher child; ``ready`` once its stdout holds the readiness line."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, *argv: str) -> None:
        self.env, self.cwd, self.log, self.argv = env, cwd, log, list(argv)
        self.proc: BaseProcess | None = None
        self._out = log
        self._starts = 0

    async def start(self) -> None:
        self._starts += 1
        self._out = self.log.with_name(f"{self.log.stem}-{id(self)}-{self._starts}.out")
        args = (self.env, str(self.cwd), str(self._out), str(self.log), self.argv)
        self.proc = _CTX.Process(target=_main, args=args)
        await asyncio.to_thread(self.proc.start)  # the first start also starts the server

    def ready(self) -> bool:
        try:
            lines = self._out.read_bytes().splitlines()
        except FileNotFoundError:
            return False
        return any(x.startswith(b"flusher ") and x.endswith(b" ready") for x in lines)

    async def wait_ready(self, deadline_s: float) -> None:
        """Until the readiness line; fails past ``deadline_s`` (a bound for a hang only)
        or once the child is gone without it."""
        end = time.monotonic() + deadline_s
        while not self.ready():
            gone = self.proc is None or not self.proc.is_alive()
            if (gone or time.monotonic() > end) and not self.ready():
                pytest.fail(f"no readiness line from the flusher:\n{self.log_tail()}")
            await asyncio.sleep(0.01)

    def log_tail(self) -> str:
        return self.log.read_bytes()[-3000:].decode("utf-8", "replace")

    async def kill(self) -> None:
        """SIGKILL (if still running), then reap."""
        if self.proc is not None:
            if self.proc.exitcode is None:
                os.kill(self.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.join)
            self.proc.close()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        assert self.proc.pid is not None
        return self.proc.pid
