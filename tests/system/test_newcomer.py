"""The mistakes a newcomer (or a tired operator) makes, each as a real ``creditgate``
subprocess: the exit code, exactly one line on stderr naming the setting (secrets
masked), no traceback, nothing left behind (files, directories, worker processes).

And the first run that now works: an unmigrated SQLite default serves, flags beat the
environment, a second demo refuses to start without touching the first one's files.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meter.store.schema import latest_version
from tests.support.servers import free_port
from tests.support.serving import CREDITGATE, creditgate_env
from tests.support.settings import REDIS_TIMEOUT_S

SECRET = "hunter2-secret"
DEADLINE_S = 60.0  # generous: only ever waited out when something is wrong


def run(
    *args: str, cwd: Path, timeout: float = DEADLINE_S, **settings: object
) -> subprocess.CompletedProcess[str]:
    env = creditgate_env(**settings)
    return subprocess.run(
        [CREDITGATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def serve(
    cwd: Path, timeout: float = DEADLINE_S, **settings: object
) -> subprocess.CompletedProcess[str]:
    """``creditgate serve`` on loopback at free ports (``settings`` win), until it exits."""
    ports = {"traffic_port": free_port(), "admin_port": free_port()}
    return run("serve", cwd=cwd, timeout=timeout, **{"host": "127.0.0.1", **ports, **settings})


def one_line(proc: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The single stderr line of a failed command, which names each of ``names``."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert SECRET not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ settings


def test_version_and_help_explain_themselves(tmp_path: Path) -> None:
    version = run("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert re.match(r"creditgate \d+\.\d+", version.stdout)
    top = run("--help", cwd=tmp_path).stdout
    assert "``" not in top
    helps = {}
    for command in ("serve", "demo", "migrate", "flush", "export", "reconcile"):
        help_ = run(command, "--help", cwd=tmp_path)
        assert help_.returncode == 0
        assert "``" not in help_.stdout
        assert command in top
        # A description paragraph of its own, beyond the usage line.
        assert len(help_.stdout.split("\n\n")) >= 3, help_.stdout
        helps[command] = help_.stdout
    serve = " ".join(helps["serve"].split())  # its own run cost a CLI start (0.7 s CPU)
    assert "CREDITGATE_TRAFFIC_PORT, default 8080" in serve
    assert "CREDITGATE_STORE_URL, default sqlite:///creditgate.db" in serve


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"worker": "2"}, ("CREDITGATE_WORKER ", "did you mean CREDITGATE_WORKERS")),
        ({"refund_on": "conect"}, ("CREDITGATE_REFUND_ON", "conect")),
        ({"fail_mode": "opn"}, ("CREDITGATE_FAIL_MODE", "'closed' or 'open'")),
        ({"store_url": f"mysql://root:{SECRET}@db/x"}, ("CREDITGATE_STORE_URL", "mysql")),
        ({"store_url": "sqlite://x.db"}, ("CREDITGATE_STORE_URL", "sqlite:///")),
        ({"redis_url": f"http://u:{SECRET}@h:6379"}, ("CREDITGATE_REDIS_URL", "redis://")),
        ({"traffic_port": "99999"}, ("CREDITGATE_TRAFFIC_PORT", "65535")),
        ({"channels": "{not json"}, ("CREDITGATE_CHANNELS", "JSON")),
        (
            {"upstream_connect_timeout_s": "81"},  # the refund window: 120 s
            ("refund_window_s must be at least 1.5 x upstream_connect_timeout_s",),
        ),
        ({"flush_bucket_s": "7"}, ("CREDITGATE_FLUSH_BUCKET_S", "does not divide 3600")),
    ],
    ids=[
        *("typo", "enum", "fail-mode", "mysql", "sqlite-no-path", "redis-scheme", "port"),
        *("json", "wait-past-refund", "bucket-straddles-hours"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, settings: dict[str, str], names: tuple[str, ...]
) -> None:
    one_line(run("serve", cwd=tmp_path, **settings), 2, *names)
    assert list(tmp_path.iterdir()) == []  # nothing created, no database file


def test_an_unknown_key_in_the_yaml_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "creditgate.yaml").write_text("trafic_port: 9000\n")
    proc = run("migrate", "--config", "creditgate.yaml", cwd=tmp_path)
    one_line(proc, 2, "trafic_port", "did you mean traffic_port")


def test_list_settings_take_comma_separated_text(tmp_path: Path) -> None:
    from config import load_settings

    env = {"CREDITGATE_REFUND_ON": "connect, 5xx", "CREDITGATE_EGRESS_ALLOW": "10.0.0.0/8,bot.lan"}
    got = load_settings(env=env)
    assert got.refund_on == ["connect", "5xx"]
    assert got.egress_allow == ["10.0.0.0/8", "bot.lan"]


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    from config import load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("traffic_port: 1111\nadmin_port: 2222\nworkers: 3\n")
    env = {"CREDITGATE_TRAFFIC_PORT": "4444", "CREDITGATE_ADMIN_PORT": "5555"}
    got = load_settings(cfg, env=env, traffic_port=7777)
    assert (got.traffic_port, got.admin_port, got.workers) == (7777, 5555, 3)


# --------------------------------------------------------------------- store


def test_a_sqlite_directory_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    proc = run("migrate", cwd=tmp_path, store_url=f"sqlite:///{missing}/x.db")
    one_line(proc, 1, "CREDITGATE_STORE_URL", "does not exist")
    assert not missing.parent.exists()


def test_export_on_an_unmigrated_store_leaves_no_file(tmp_path: Path) -> None:
    proc = run("export", cwd=tmp_path)  # the default store: ./creditgate.db
    one_line(proc, 1, "CREDITGATE_STORE_URL", "creditgate migrate")
    assert list(tmp_path.iterdir()) == []


def test_export_on_a_store_behind_the_schema_names_migrate(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "old.db").close()  # a database with no schema at all
    proc = run("export", cwd=tmp_path, store_url=f"sqlite:///{tmp_path}/old.db")
    line = one_line(proc, 1, "CREDITGATE_STORE_URL", "creditgate migrate")
    assert f"version 0, this creditgate needs {latest_version()}" in line


@pytest.mark.postgres
def test_serve_refuses_a_postgres_store_behind_the_schema(tmp_path: Path, pg_dsn: str) -> None:
    proc = serve(tmp_path, store_url=pg_dsn, workers=1)
    one_line(proc, 1, "CREDITGATE_STORE_URL", "creditgate migrate")


# --------------------------------------------------------------------- Redis


def test_reconcile_without_redis_is_one_line_with_the_url_masked(tmp_path: Path) -> None:
    assert run("migrate", cwd=tmp_path).returncode == 0
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    proc = run("reconcile", cwd=tmp_path, redis_url=url)
    line = one_line(proc, 1, "CREDITGATE_REDIS_URL", "redis://:***@127.0.0.1")
    assert "does not answer" in line


def test_flush_without_redis_is_one_line(tmp_path: Path) -> None:
    assert run("migrate", cwd=tmp_path).returncode == 0
    proc = run("flush", "--once", cwd=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    one_line(proc, 1, "CREDITGATE_REDIS_URL")


# --------------------------------------------------------------------- ports


def _processes_with(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (ours and our children's)."""
    found = []
    needle = mark.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on (no SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("which", ["traffic_port", "admin_port"])
def test_a_busy_port_fails_at_once_and_leaves_no_worker(
    tmp_path: Path, redis_url: str, held_port: int, which: str
) -> None:
    mark = f"mark-{uuid.uuid4().hex}"
    proc = serve(
        tmp_path,
        timeout=30,  # far below the 60 s the workers were once waited for
        redis_url=redis_url,
        workers=2,
        test_mark=mark,
        **{which: held_port},
    )
    one_line(proc, 1, f"CREDITGATE_{which.upper()}", f"127.0.0.1:{held_port}", "in use")
    assert _processes_with(mark) == []
    assert not (tmp_path / "creditgate.db").exists()  # refused before touching the store


def test_a_demo_on_a_busy_port_stops_before_starting_anything(
    tmp_path: Path, held_port: int
) -> None:
    proc = run("demo", "--traffic-port", str(held_port), cwd=tmp_path, admin_port=free_port())
    one_line(proc, 1, "CREDITGATE_TRAFFIC_PORT", str(held_port), "--traffic-port")
    assert sorted(p.name for p in (tmp_path / ".demo").iterdir()) == ["lock"]  # no Redis


def test_a_state_dir_that_cannot_be_written_is_one_line(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "a-file").write_text("")
    proc = serve(tmp_path, redis_url=redis_url, state_dir=tmp_path / "a-file" / "state")
    one_line(proc, 1, "CREDITGATE_STATE_DIR", "a-file/state")


# --------------------------------------------------------------- a first run


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``creditgate *args`` in the background, its output piped for the test to read."""
    return subprocess.Popen(
        [CREDITGATE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_line(proc: subprocess.Popen[str], pattern: str) -> list[str]:
    """stdout lines up to the first that contains ``pattern``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"exited {proc.wait()} before {pattern!r}: {seen}")
        seen.append(line.rstrip("\n"))
        if pattern in line:
            return seen
    raise AssertionError(f"no {pattern!r} in {seen}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_unmigrated_sqlite_default_serves_with_redis_down_and_flags_beating_env(
    tmp_path: Path,
) -> None:
    """The README's path as a newcomer takes it: nothing migrated, Redis not running,
    the port given both in the environment and as a flag."""
    env_port, flag_port, admin = free_port(), free_port(), free_port()
    redis_url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    env = creditgate_env(
        redis_url=redis_url,
        host="127.0.0.1",
        traffic_port=env_port,
        admin_port=admin,
        workers=1,
        log_format="text",
    )
    proc = _start("serve", "--traffic-port", str(flag_port), cwd=tmp_path, env=env)
    try:
        banner = _wait_line(proc, "creditgate: traffic on")[-1]
        assert f"127.0.0.1:{flag_port}" in banner, banner
        status, body = _get(f"http://127.0.0.1:{admin}/readyz")
        ready = orjson.loads(body)
        assert status == 503, ready
        assert ready["checks"]["store"] == "ok", ready
        assert ready["schema"] == {"version": latest_version(), "expected": latest_version()}
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", env_port), 2),
        ):
            pass
    finally:
        err = _stop(proc)
    assert (tmp_path / "creditgate.db").exists()  # the default store, migrated by serve
    assert "redis://:***@127.0.0.1" in err
    assert SECRET not in err
    assert "Traceback" not in err


def test_a_second_demo_refuses_and_the_first_keeps_its_files(tmp_path: Path) -> None:
    env = creditgate_env(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # the demo's own Redis wins
        traffic_port=free_port(),
        admin_port=free_port(),
        # The messages below must be decided: the production 0.5 s Redis timeout could
        # refuse one 503 on a busy machine (the demo takes the rest of its settings).
        redis_timeout_s=REDIS_TIMEOUT_S,
    )
    first = _start("demo", cwd=tmp_path, env=env)
    try:
        text = "\n".join(_wait_line(first, "Ctrl-C stops"))
        op = re.search(r"operator token: (\S+)", text)
        owner = re.search(r"owner token: +(\S+)", text)
        assert op, text
        assert owner, text
        for expected in ("/ui", "/funds", "reference", "/usage", " export ", "/hooks/web/"):
            assert expected in text, expected
        # the console under another host name than the traffic's: no shared cookies
        assert re.search(r"dashboard: +http://localhost:\d+/ui ", text), text
        assert re.search(r"curl -s http://127\.0\.0\.1:\d+/hooks/web/", text), text
        tight = re.search(r"and (\S+) \(\$0\.60", text)
        assert tight
        db = tmp_path / ".demo" / "creditgate.db"
        before = (db.stat().st_ino, db.stat().st_mtime_ns)

        second = run("demo", cwd=tmp_path, traffic_port=free_port(), admin_port=free_port())
        one_line(second, 1, "another creditgate demo", str(first.pid))
        assert (db.stat().st_ino, db.stat().st_mtime_ns)[0] == before[0]

        # The first still serves: three sessions, then the refusal, each in the access log.
        traffic = re.search(r"traffic on (http://\S+)", text)
        assert traffic
        codes = []
        for user in ("u1", "u2", "u3", "u4"):
            req = urllib.request.Request(
                f"{traffic.group(1)}/hooks/web/{tight.group(1)}",
                data=b"hi",
                headers={"X-Channel-User-Id": user},
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    codes.append(resp.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        assert codes == [200, 200, 200, 402]
    finally:
        err = _stop(first)
    access = [line for line in err.splitlines() if "creditgate.access" in line]
    assert any(f"/hooks/web/{tight.group(1)} 402 credits_exhausted" in x for x in access), err
    assert sum(" 200 " in x for x in access) >= 3
    assert op.group(1) not in err
    assert owner.group(1) not in err


def test_kubernetes_service_links_are_not_mistaken_for_typos() -> None:
    from config.loading import unknown_variables

    links = {
        "CREDITGATE_PORT": "tcp://10.0.0.1:8080",
        "CREDITGATE_ADMIN_SERVICE_HOST": "10.0.0.2",
        "CREDITGATE_ADMIN_SERVICE_PORT_HTTP": "8081",
        "CREDITGATE_PORT_8080_TCP_ADDR": "10.0.0.1",
    }
    assert unknown_variables(links) == []
    typo = unknown_variables({"CREDITGATE_TRAFIC_PORT": "8080"})
    assert typo == [
        "CREDITGATE_TRAFIC_PORT is not a creditgate setting: did you mean CREDITGATE_TRAFFIC_PORT?"
    ]
