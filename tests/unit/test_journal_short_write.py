"""A journal write the disk takes only part of leaves no partial line behind.

A full disk (or a file size limit) can make ``write(2)`` take only the first part of a
batch and return a short count. Before, :meth:`Journal.append_all` took that for done:
the file kept a line without its newline, the next append joined it, and the process
that took the journal over read one garbled line for two records. A genuine short write
here: a subprocess whose ``RLIMIT_FSIZE`` ends the file inside the batch (``SIGXFSZ``
ignored, as a process on a full disk gets the short count, not a signal).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, logging, os, resource, signal, sys
from meter.admission.journal import Journal, take_over_dead

logging.basicConfig(stream=sys.stderr)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
state, = sys.argv[1:]
j = Journal(state, "owed")
first = "D " + "a" * 40
ok_first = j.append_or_log([first])
# The file may grow 100 bytes past the first line: the batch of two 80-byte lines is
# cut inside its second line.
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (j.size + 100, hard))
ok_batch = j.append_or_log(["D " + "b" * 78, "D " + "c" * 78])
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
size_after_cut = os.path.getsize(j.path)
size_counted = j.size
j.append("D " + "d" * 40)
os.close(j._fd)  # "dies": its lock is free, the journal taken over as it is
[dead] = take_over_dead(state, "owed")
print(json.dumps({
    "ok_first": ok_first, "ok_batch": ok_batch, "size_after_cut": size_after_cut,
    "first_size": len(first) + 1, "size_counted": size_counted, "lines": dead.lines,
}))
"""


def test_a_short_write_is_undone_and_reported(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["ok_first"] is True
    assert seen["ok_batch"] is False  # reported: append_or_log logged it
    assert "not written" in done.stderr
    # Undone: the file is as it was before the batch, and its size counts no lost byte.
    assert seen["size_after_cut"] == seen["first_size"] == seen["size_counted"]
    assert seen["lines"] == ["D " + "a" * 40, "D " + "d" * 40]
