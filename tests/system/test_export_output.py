"""``creditgate export --output`` where the path is not a plain new file, as a real
``creditgate`` subprocess on a migrated SQLite store (an export of no session is its
header row).

* ``/dev/stdout`` (and ``/dev/fd/N``) is the descriptor the command was given, written as
  it is: into a pipe (``| gzip``), or appended to a file the shell opened with ``>>``.
  Before, the path was resolved to the descriptor's target and replaced by a new file:
  a pipe's (``pipe:[N]``) is no file, so the export failed; a file opened for appending
  lost everything it held.
* A symbolic link another user put in a shared sticky folder (``/tmp``) is not followed
  (the kernel's ``fs.protected_symlinks`` rule, kept whatever the sysctl says): before,
  an export run by root at ``/tmp/usage.csv`` replaced whatever file that user's link
  named. A link of one's own is followed, as before.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.serving import CREDITGATE, creditgate_env

DEADLINE_S = 60.0  # generous: only ever waited out when something is wrong
HEADER = b"workspace_id,app_id,channel,channel_user"
NOBODY = 65534


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cg.db'}"
    done = subprocess.run(
        [CREDITGATE, "migrate"], env=creditgate_env(store_url=url), cwd=tmp_path,
        capture_output=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return url


def export(url: str, output: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    args = ["export", "--sessions", "--from", "2026-01-01", "--to", "2026-01-02"]
    return subprocess.run(
        [CREDITGATE, *args, "--output", output], env=creditgate_env(store_url=url),
        timeout=DEADLINE_S, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


def test_dev_stdout_into_a_pipe(store_url: str, tmp_path: Path) -> None:
    done = export(store_url, "/dev/stdout", capture_output=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(HEADER)


def test_dev_stdout_appended_to_a_file(store_url: str, tmp_path: Path) -> None:
    kept = tmp_path / "all.csv"
    kept.write_bytes(b"the last export\n")
    with kept.open("ab") as appended:  # the shell's `>> all.csv`
        done = export(store_url, "/dev/stdout", stdout=appended, stderr=subprocess.PIPE)
    assert done.returncode == 0, done.stderr
    got = kept.read_bytes()
    assert got.startswith(b"the last export\n" + HEADER)


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of another user needs root to make")
def test_a_link_another_user_put_in_a_shared_folder_is_not_followed(
    store_url: str, tmp_path: Path
) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone makes files, only their owner renames them
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's own file\n")
    planted = shared / "usage.csv"
    planted.symlink_to(victim)
    os.lchown(planted, NOBODY, NOBODY)
    done = export(store_url, str(planted), capture_output=True, cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"creditgate export: --output {planted}: ")
    assert victim.read_bytes() == b"root's own file\n"
    assert sorted(p.name for p in shared.iterdir()) == ["usage.csv"]  # no partial left
    # A link of one's own (or of the folder's owner) in the same folder is followed.
    os.lchown(planted, 0, 0)
    done = export(store_url, str(planted), capture_output=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert victim.read_bytes().startswith(HEADER)
    assert planted.is_symlink()
