"""The file ``creditgate export --output`` writes beside its final name, while it writes.

* Owner-only from the moment it exists: a mode given later (before, the replaced file's
  ``0600`` right after creating it ``0644``) takes back no descriptor someone opened on
  it meanwhile, and such a reader (who watches the folder) then read the whole export.
  The mode the kernel gave it is read back the moment it is created (``os.open`` wrapped
  only to look: the real call does the work).
* On disk before it takes the final name, and that name on disk after: else a machine
  that crashes soon after the rename can show the name with an empty or cut file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import export_output


def _watch(
    monkeypatch: pytest.MonkeyPatch, name: str, seen: list[Any], how: Callable[..., Any]
) -> None:
    real = getattr(os, name)

    def watched(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        seen.append(how(got, *args))
        return got

    monkeypatch.setattr(export_output.os, name, watched)


@pytest.mark.parametrize("existing", [None, 0o600, 0o640])
def test_the_partial_file_is_owner_only_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: int | None
) -> None:
    out = tmp_path / "usage.csv"
    if existing is not None:
        out.write_bytes(b"old\n")
        out.chmod(existing)
    opened: list[os.stat_result] = []
    _watch(monkeypatch, "open", opened, lambda fd, *a: os.fstat(fd))
    old = os.umask(0o022)
    try:
        with export_output.output(str(out)) as f:
            f.write(b"new\n")
    finally:
        os.umask(old)
    created = [stat.S_IMODE(st.st_mode) for st in opened if stat.S_ISREG(st.st_mode)]
    assert created == [0o600]
    assert out.read_bytes() == b"new\n"
    # The final mode is as before: the replaced file's, or open()'s for a new one.
    assert stat.S_IMODE(out.stat().st_mode) == (0o644 if existing is None else existing)


def test_the_file_is_synced_before_its_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "usage.csv"
    calls: list[tuple[str, str]] = []

    def what(fd: int) -> str:
        return "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"

    _watch(monkeypatch, "fsync", calls, lambda _, fd: ("fsync", what(fd)))
    _watch(monkeypatch, "replace", calls, lambda _, src, dst: ("replace", Path(dst).name))
    with export_output.output(str(out)) as f:
        f.write(b"new\n")
    assert calls == [("fsync", "file"), ("replace", "usage.csv"), ("fsync", "folder")]
