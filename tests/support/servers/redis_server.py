"""A standalone ``redis-server`` child process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.support.servers.process import HOST, ServerError, Stoppable, free_port, register, tail
from tests.support.servers.resp import RedisReplyError, info_fields, redis_command

# How long a redis-server may take to answer after it is started: a bound for a hang
# only (it was 10 s; a loaded machine's start can take longer, and start_redis then
# killed it and tried another port).
READY_BOUND_S = 60.0


@dataclass(eq=False)
class RedisServer(Stoppable):
    """One ``redis-server`` child process (not daemonized) bound to 127.0.0.1."""

    port: int
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, *args: str | bytes | int) -> Any:
        """Run one command on this server (see :func:`redis_command`)."""
        return redis_command(self.port, *args, host=self.host)

    def ping(self) -> bool:
        try:
            return bool(self.command("PING") == "PONG")
        except (OSError, RedisReplyError):
            return False

    def start(self, *, wait: bool = True, timeout: float = READY_BOUND_S) -> Self:
        """(Re)start on the same port and directory; no-op if already running."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        register(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def _answers_as_ours(self) -> bool:
        """Whether this port is answered by our process: free ports are picked by every
        test process at once (``pytest -n``, a neighbour's run), and another's server that
        won the race for the port would answer PING too."""
        try:
            info = info_fields(str(self.command("INFO", "server")))
        except (OSError, RedisReplyError):
            return False
        return self.proc is not None and info.get("process_id") == str(self.proc.pid)

    def wait_ready(self, timeout: float = READY_BOUND_S) -> None:
        """Block until our server answers; raise ServerError (and stop) if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self.proc = None
                raise ServerError(
                    f"redis-server on port {self.port} exited:\n{tail(self.log_file)}"
                )
            if self._answers_as_ours():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"redis-server on port {self.port} not answering PING after "
                    f"{timeout}s:\n{tail(self.log_file)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block the server answers nothing (SIGSTOP; SIGCONT at its end,
        whatever happens): what its clients write waits, new connections complete in
        the kernel and wait too. Unlike ``CLIENT PAUSE`` with a duration, it lasts
        exactly as long as the test needs, however slow the machine."""
        assert self.proc is not None, "not running"
        pid = self.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (simulates a crash); ``start()`` brings it back on the same port."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _emergency_stop(self) -> None:
        self.kill()


def start_redis(
    workdir: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    timeout: float = READY_BOUND_S,
) -> RedisServer:
    """Start a standalone redis-server on ``port`` (a free one if None) and wait for PING."""
    attempts = 1 if port is not None else 3
    last: ServerError | None = None
    for _ in range(attempts):
        server = RedisServer(
            port=port if port is not None else free_port(),
            workdir=Path(workdir),
            extra_args=list(extra_args),
        )
        try:
            return server.start(timeout=timeout)
        except ServerError as exc:  # port grabbed meanwhile? try another one
            last = exc
    assert last is not None
    raise last
