"""What the wheel ships, read from pyproject.toml: every package, every Lua script.

A package without ``__init__.py`` is skipped by ``packages.find`` and a Lua script that
no ``package-data`` pattern matches is left out of the wheel: either works from a
checkout and fails once installed, so both are checked here without building.
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("gateway", "meter", "config")


def test_every_folder_with_python_is_a_package() -> None:
    missing = [
        str(d.relative_to(ROOT))
        for top in PACKAGES
        for d in [ROOT / top, *sorted((ROOT / top).rglob("*"))]
        if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert missing == []


def test_packages_find_includes_every_product_package() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(any(fnmatch(top, pattern) for pattern in include) for top in PACKAGES)


def test_every_lua_script_is_package_data() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["meter"]
    lua = sorted((ROOT / "meter" / "lua").glob("*.lua"))
    assert lua, "meter/lua holds the scripts"
    left_out = [
        p.name
        for p in lua
        if not any(fnmatch(str(p.relative_to(ROOT / "meter")), pat) for pat in patterns)
    ]
    assert left_out == []
