"""A real ``prometheus`` server scraping one target every second, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.servers.process import HOST, free_port
from tests.support.serving import stop


def prometheus_binary() -> str:
    """The ``prometheus`` server binary; fails (never skips) when it is not installed."""
    binary = shutil.which("prometheus")
    if binary is None and Path("/usr/bin/prometheus").exists():
        binary = "/usr/bin/prometheus"
    if binary is None:
        pytest.fail(
            "prometheus not found on PATH: run `make test` (scripts/install-deps.sh "
            "installs the apt package prometheus)",
            pytrace=False,
        )
    return binary


@contextlib.asynccontextmanager
async def prometheus_server(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A real ``prometheus`` scraping ``target`` every second; yields its base URL."""
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: creditgate\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    data = tmp_path / "prometheus-data"
    data.mkdir()
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address={HOST}:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://{HOST}:{port}"
        finally:
            await stop(proc, 15)
