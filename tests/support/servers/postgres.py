"""A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support.servers.process import HOST, ServerError, Stoppable, free_port, register, tail


def find_pg_bin() -> Path:
    """Directory of the newest PostgreSQL server binaries (/usr/lib/postgresql/N/bin)."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(x) for x in re.findall(r"\d+", name))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        raise ServerError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
            "run `make test` (scripts/install-deps.sh installs them)"
        )
    return Path(found[-1]).parent


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Can ``user`` reach (search) ``path`` and every directory above it?"""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


_SAFE_DBNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(eq=False)
class PostgresServer(Stoppable):
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) listening on 127.0.0.1.

    ``dir`` holds the data directory, the log and the unix socket.  As root, the
    server runs as the ``postgres`` user (initdb refuses root); when that user cannot
    reach the requested directory (pytest's tmp dirs are 0700) or the socket path
    would be too long, ``dir`` is a private directory under /tmp instead, removed
    by ``cleanup()``.
    """

    port: int
    dir: Path
    bin_dir: Path
    run_as_postgres: bool
    owns_dir: bool = False
    host: str = HOST

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "log"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.run_as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )

    def _pg(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def initdb(self) -> None:
        res = self._run(
            self._pg("initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--no-locale",
        )  # fmt: skip
        if res.returncode != 0:
            raise ServerError(f"initdb failed:\n{res.stdout}\n{res.stderr}")

    @property
    def pid(self) -> int | None:
        """PID of the postmaster if it is running, else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> Self:  # a bound for a hang only
        """Start (again) on the same data directory and port; no-op if running."""
        if self.running:
            return self
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        res = self._run(
            self._pg("pg_ctl"),
            "-D", str(self.data_dir),
            "-w", "-t", str(int(timeout)),
            "-o", opts,
            "-l", str(self.log_file),
            "start",
            timeout=timeout + 10,
        )  # fmt: skip
        register(self)
        if res.returncode != 0:
            raise ServerError(
                f"pg_ctl start failed (port {self.port}):\n{res.stdout}\n{res.stderr}\n"
                f"{tail(self.log_file)}"
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (or smart/immediate); no-op if not running."""
        if not self.running:
            return
        res = self._run(self._pg("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop")
        if res.returncode != 0 and self.running:
            self._kill()

    def _kill(self) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop, and remove the directory if this object created it under /tmp."""
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.dir.parent, ignore_errors=True)

    def _emergency_stop(self) -> None:
        if self.running:
            self.stop("immediate")
        if self.owns_dir:
            shutil.rmtree(self.dir.parent, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql (as client, over TCP); return its output."""
        argv = [
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", "postgres",
            "-d", database, "-c", sql,
        ]  # fmt: skip
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise ServerError(f"psql failed: {sql!r}\n{res.stderr}")
        return res.stdout

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its DSN."""
        if not _SAFE_DBNAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` (disconnecting its sessions)."""
        if not _SAFE_DBNAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def start_postgres(workdir: Path, port: int | None = None) -> PostgresServer:
    """initdb a fresh cluster in ``workdir`` and start it on ``port`` (free one if None)."""
    bin_dir = find_pg_bin()
    as_root = os.geteuid() == 0
    pg_dir = Path(workdir).absolute()
    owns_dir = False
    socket_too_long = len(str(pg_dir)) + len("/.s.PGSQL.65535.lock") > 100
    if as_root:
        user = pwd.getpwnam("postgres")
        if socket_too_long or not _traversable_by(pg_dir.parent, user):
            base = Path(tempfile.mkdtemp(prefix="creditgate-pg-"))
            base.chmod(0o711)
            pg_dir, owns_dir = base / "pg", True
        subprocess.run(
            ["install", "-d", "-o", "postgres", "-g", "postgres", str(pg_dir)], check=True
        )
    else:
        if socket_too_long:
            pg_dir, owns_dir = Path(tempfile.mkdtemp(prefix="creditgate-pg-")) / "pg", True
        pg_dir.mkdir(parents=True, exist_ok=True)

    server = PostgresServer(
        port=port if port is not None else free_port(),
        dir=pg_dir,
        bin_dir=bin_dir,
        run_as_postgres=as_root,
        owns_dir=owns_dir,
    )
    register(server)
    try:
        server.initdb()
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            try:
                server.start()
                break
            except ServerError:
                if attempt == attempts - 1:
                    raise
                server.port = free_port()  # port taken meanwhile: try another one
    except BaseException:
        server._emergency_stop()
        raise
    return server
