"""Loading :class:`~config.settings.Settings` from flags, environment and a YAML file.

Precedence (:func:`load_settings`): flags > environment > YAML file (``CREDITGATE_CONFIG``
or ``--config``) > defaults. An unknown ``CREDITGATE_*`` variable stops start-up with the
closest known name. Bad input raises :class:`SettingsError` naming the setting (secrets
never shown), which stops start-up.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError as SourceError

from config.layered import LAYERED
from config.settings import ENV_PREFIX, Settings
from config.urls import mask_url


class SettingsError(ValueError):
    """Settings that cannot start creditgate; the message (one line) names each bad one."""


SECRET_SETTINGS = frozenset(
    {"operator_token", "secret_key", "stripe_secret_key", "stripe_webhook_secret"}
)
URL_SETTINGS = frozenset({"redis_url", "store_url"})
# Read by the process, not settings: CREDITGATE_CONFIG names the file; CREDITGATE_TEST_*
# belong to the test suite.
_NOT_SETTINGS = ("CONFIG",)
_RESERVED_PREFIXES = ("TEST_",)
# Kubernetes service links of a Service named creditgate[-x] (CREDITGATE_PORT,
# CREDITGATE_ADMIN_SERVICE_HOST, ...): injected by the platform, not settings.
_SERVICE_LINK = re.compile(
    r"^CREDITGATE(_[A-Z0-9_]+?)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)
_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One message per ``CREDITGATE_*`` variable that names no setting."""
    known = {env_name(f) for f in Settings.model_fields} | {ENV_PREFIX + n for n in _NOT_SETTINGS}
    out = []
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if upper.removeprefix(ENV_PREFIX).startswith(_RESERVED_PREFIXES):
            continue
        if _SERVICE_LINK.fullmatch(upper) or (
            upper.endswith("_PORT") and _LINK_VALUE.match(env[key])
        ):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f": did you mean {close[0]}?" if close else ""
        out.append(f"{key} is not a creditgate setting{hint}")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings named by ``CREDITGATE_*`` variables; dict settings are JSON."""
    upper = {k.upper(): v for k, v in env.items()}
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = upper.get(env_name(name))
        if raw is None:
            continue
        value: Any = raw
        if typing.get_origin(field.annotation) is dict:
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise SettingsError(f"{env_name(name)}: not a JSON object ({exc})") from None
        out[name] = value
    return out


def _shown(name: str, value: object) -> str:
    if name in SECRET_SETTINGS:
        return ""
    if isinstance(value, str):
        return f" (got {mask_url(value) if name in URL_SETTINGS else value!r})"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f" (got {value!r})"
    return ""


def _problem(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        return msg
    name = loc[0]
    where = f" ({'.'.join(loc[1:])})" if len(loc) > 1 and not loc[1].isdigit() else ""
    if err.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(name, list(Settings.model_fields), n=1, cutoff=0.6)
        hint = f": did you mean {close[0]}?" if close else ""
        return f"{name} is not a creditgate setting{hint}"
    value = err.get("input")
    shown = _shown(name, value) if name not in URL_SETTINGS else ""
    return f"{env_name(name)}{where}: {msg}{shown}"


def load_settings(
    path: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings`: ``overrides`` (flags) > ``env`` > the YAML file at ``path``
    (or ``$CREDITGATE_CONFIG``) > defaults. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    unknown = unknown_variables(env)
    if unknown:
        raise SettingsError("; ".join(unknown))
    path = path or env.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            reason = str(exc).replace("\n", " ")
            raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {path}: {reason}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"{ENV_PREFIX}CONFIG: {path} must hold a mapping")
        data.update(loaded)
    data.update(_from_env(env))
    data.update(overrides)
    token = LAYERED.set(True)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    finally:
        LAYERED.reset(token)
