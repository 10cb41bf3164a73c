"""The settings an overlay gives the creditgate container, checked by the app's own
settings model in a clean environment (skipped when the app is not importable)."""

from __future__ import annotations

import os
from pathlib import Path

# Secrets kept outside git: the example's production-shaped values stand in for them.
EXTERNAL = {
    "redis-url": "redis+cluster://:x@redis-cluster:6379",
    "store-url": "postgresql://creditgate:x@postgres:5432/creditgate",
    "operator-token": "x" * 32,
    "secret-key": "y" * 32,
}


def check_settings(envfile: Path, overlay: str) -> int:
    env = {"PATH": os.environ.get("PATH", "")}
    for line in envfile.read_text().splitlines():
        key, _, value = line.partition("=")
        if value.startswith("@external:"):
            value = EXTERNAL[value.removeprefix("@external:")]
        env[key] = value
    os.environ.clear()
    os.environ.update(env)
    try:
        from config import SettingsError, load_settings
    except ImportError as exc:
        print(f"  skip  settings check: config not importable ({exc})")
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"  FAIL  {overlay}: {exc}")
        return 1
    fields = set(type(settings).model_fields) | {"config"}
    unknown = [k for k in env if k.startswith("CREDITGATE_") and k[11:].lower() not in fields]
    if unknown:
        print(f"  FAIL  {overlay}: not settings of creditgate (silently ignored): {unknown}")
        return 1
    print(f"  ok    {overlay}: settings accepted by config.load_settings")
    return 0
