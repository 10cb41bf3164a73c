"""requirements.lock against pyproject.toml, the venv the tests run in, and the Dockerfile.

The image installs the lock alone (``pip install --require-hashes --no-deps``), so the
lock must hold every runtime dependency and every dependency of those, each at one exact
version inside pyproject.toml's range with the hashes of its files; ``make deps``
installs the same versions into .venv, so the tests run on what ships. Dependencies of
dependencies are read from the metadata of the packages installed here (the locked
versions, as the venv test checks). A failure here means: run ``make lock`` (after
editing pyproject.toml's dependencies), then ``make deps``.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
FIX = "requirements.lock is out of date: run `make lock`, then `make deps`"


@dataclass(frozen=True)
class Locked:
    line: str
    requirement: Requirement
    hashes: tuple[str, ...]
    others: tuple[str, ...]  # anything on the entry that is not a hash option

    @property
    def name(self) -> NormalizedName:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        return next(iter(self.requirement.specifier)).version

    def applies(self) -> bool:
        """Whether pip installs this entry here (its marker, if any, holds)."""
        marker = self.requirement.marker
        return marker is None or marker.evaluate({"extra": ""})


def read_lock(text: str) -> list[Locked]:
    entries = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, rest = line.partition(" --")
        options = ("--" + rest).split() if rest else []
        entries.append(
            Locked(
                line=spec.strip(),
                requirement=Requirement(spec),
                hashes=tuple(o for o in options if HASH.fullmatch(o)),
                others=tuple(o for o in options if not HASH.fullmatch(o)),
            )
        )
    return entries


ENTRIES = read_lock(LOCK.read_text())
# What pip installs here: at most one entry per package (a universal lock may fork a
# package by marker, but only one fork applies to one interpreter).
HERE = {e.name: e for e in ENTRIES if e.applies()}


def applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras})


def closure() -> tuple[list[str], set[NormalizedName]]:
    """Walk the runtime requirements through the installed metadata: what the lock misses
    or pins outside a range, and the packages reached."""
    problems: list[str] = []
    reached: set[NormalizedName] = set()
    todo = deque((r, "pyproject.toml") for r in RUNTIME if applies(r, set()))
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        req, by = todo.popleft()
        name = canonicalize_name(req.name)
        entry = HERE.get(name)
        if entry is None:
            problems.append(f"{req} (needed by {by}) is not in the lock")
            continue
        if not req.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{req} (needed by {by}): the lock has {entry.line}")
        reached.add(name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        for raw in importlib.metadata.requires(req.name) or []:
            dep = Requirement(raw)
            if applies(dep, req.extras):
                todo.append((dep, f"{entry.line}{sorted(req.extras) or ''}"))
    return problems, reached


def test_every_lock_entry_is_one_exact_version_with_its_hashes() -> None:
    assert len(ENTRIES) > 10, "requirements.lock lists the runtime dependencies"
    bad = [
        e.line
        for e in ENTRIES
        if len(e.requirement.specifier) != 1
        or next(iter(e.requirement.specifier)).operator != "=="
        or "*" in e.version
        or e.requirement.extras  # pip refuses a constraint with extras (make deps)
        or e.requirement.url
        or not e.hashes
        or e.others
    ]
    assert bad == [], "each entry: name==version, --hash=sha256:... only"
    names = [(e.name, str(e.requirement.marker)) for e in ENTRIES]
    assert len(names) == len(set(names)), "a package is locked twice"


def test_every_runtime_dependency_is_locked_within_its_range() -> None:
    assert RUNTIME, "pyproject.toml lists the runtime dependencies"
    problems = [
        f"{req}: " + (f"the lock has {HERE[name].line}" if name in HERE else "not in the lock")
        for req in RUNTIME
        if applies(req, set())
        for name in [canonicalize_name(req.name)]
        if name not in HERE or not req.specifier.contains(HERE[name].version, prereleases=True)
    ]
    assert problems == [], FIX


def test_the_lock_holds_every_dependency_of_the_dependencies() -> None:
    problems, _ = closure()
    assert problems == [], FIX


def test_the_lock_holds_nothing_the_runtime_does_not_need() -> None:
    _, reached = closure()
    assert sorted(set(HERE) - reached) == [], FIX


def test_the_venv_runs_the_locked_versions() -> None:
    wrong = []
    for name, entry in sorted(HERE.items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "nothing"
        if installed == "nothing" or Version(installed) != Version(entry.version):
            wrong.append(f"{entry.line}: .venv has {installed}")
    assert wrong == [], "the tests run on other versions than the image ships: run `make deps`"


def test_the_dockerfile_installs_the_lock_alone_before_the_sources() -> None:
    lines = [
        line.strip() for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    ]
    install = "RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock"
    assert "COPY requirements.lock ./" in lines
    assert install in lines
    assert lines.index("COPY requirements.lock ./") < lines.index(install)
    # The dependency layer is built from the lock alone, before any source is copied.
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY config/"))
    assert lines.index(install) < first_source
    copies_before = [line for line in lines[: lines.index(install)] if line.startswith("COPY")]
    assert copies_before == ["COPY requirements.lock ./"]
    # Nothing else is resolved at build time: every other install takes no dependencies.
    pip_installs = [part for line in lines for part in line.split("&&") if "pip install" in part]
    assert pip_installs, "the Dockerfile installs with pip"
    assert [p for p in pip_installs if "--no-deps" not in p] == []
