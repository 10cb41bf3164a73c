"""The Lua scripts as Redis receives them: assembled from meter/lua's fragments."""

from __future__ import annotations

import re
from importlib import resources

from meter.redis_layer.scripts import lua_source

SCRIPTS = (
    "admit",
    "refund",
    "grant",
    "reverse",
    "claim",
    "ack",
    "peek",
    "rename_fields",
    "rebuild",
    "reindex",
)


def test_scripts_are_assembled_whole() -> None:
    """No include is left, every fragment lands once, in the order the script names."""
    admit = lua_source("admit")
    lua = resources.files("meter").joinpath("lua")
    parts = ("lib_sessions", "admit_batch", "admit_message", "admit_rules", "admit_full")
    starts = [admit.index(lua.joinpath(f"{name}.lua").read_text()) for name in parts]
    assert starts == sorted(starts)
    assert admit.count("local function admit_one(") == 1
    assert "local function session_find(" in lua_source("refund")
    assert "local function peek(" in lua_source("peek")
    for name in SCRIPTS:
        assert not re.search(r"^-- #include", lua_source(name), re.M), name
