"""Typed settings from command-line flags, ``CREDITGATE_*`` environment variables and an
optional YAML file.

Precedence (:func:`load_settings`): flags > environment > YAML file (``CREDITGATE_CONFIG``
or ``--config``) > defaults. An unknown ``CREDITGATE_*`` variable stops start-up with the
closest known name; list settings take comma-separated text (or a JSON list).
Money settings are decimal strings (``"500.00"``) or whole dollars (``500``) and are held
as integer micro-dollars; every duration is seconds, so tests can shrink them.
Bad input raises :class:`SettingsError` naming the setting, which stops start-up.
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import json
import os
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from config.money import InvalidAmount, parse_amount
from config.urls import check_redis_url, check_store_url, mask_url

ENV_PREFIX = "CREDITGATE_"


def _money(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a decimal amount such as '500.00'")
    if isinstance(value, int):
        return value * 1_000_000
    try:
        return parse_amount(value)
    except InvalidAmount:
        raise ValueError("must be a plain decimal amount such as '500.00'") from None


Micros = Annotated[int, BeforeValidator(_money)]
_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


def _allow_list(value: object) -> object:
    """Egress allow-list entries: a list, or comma-separated text or a JSON list
    (environment)."""
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
    if not isinstance(value, list | tuple):
        return value
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError("entries must be strings")
        entry = item.strip().lower()
        if not entry:
            continue
        try:
            out.append(str(ipaddress.ip_network(entry)))
            continue
        except ValueError:
            pass
        last = entry.rsplit(".", 1)[-1]
        if not _HOST_PATTERN.match(entry) or last.isdigit() or last.startswith("0x"):
            raise ValueError(
                f"{item!r} is neither a network (CIDR, host bits zero) nor a host name"
            )
        out.append(entry)
    return out


EgressAllow = Annotated[list[str], NoDecode, BeforeValidator(_allow_list)]


def _text_list(value: object) -> object:
    """A list setting given as comma-separated text (or a JSON list) in the environment."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


RefundOn = Annotated[
    list[Literal["connect", "timeout", "5xx"]], NoDecode, BeforeValidator(_text_list)
]
Seconds = Annotated[float, Field(gt=0)]
DAY = 86_400.0


class ChannelRule(BaseModel):
    """How to read one channel's callbacks (docs/design.md §3)."""

    model_config = {"extra": "forbid"}

    user_pointer: str | None = None
    idempotency_pointer: str | None = None
    # A callback is billable unless the JSON value at a pointer matches one of its values
    # (e.g. ``{"/type": ["typing"]}``) or a pointer in ``skip_if_present`` exists.
    skip_if_equals: dict[str, list[str]] = Field(default_factory=dict)
    skip_if_present: list[str] = Field(default_factory=list)
    # Pointers that must exist for a callback to be billable (e.g. WhatsApp ``messages``).
    bill_only_if_present: list[str] = Field(default_factory=list)
    delivery_url: str | None = None


class Settings(BaseSettings):
    """Every knob of creditgate, with the defaults of docs/design.md §1."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # Where things are.
    redis_url: str = "redis://127.0.0.1:6379/0"
    store_url: str = "sqlite:///creditgate.db"
    host: str = "0.0.0.0"
    traffic_port: int = Field(8080, ge=0, le=65535)
    admin_port: int = Field(8081, ge=0, le=65535)
    workers: int = Field(0, ge=0, description="traffic worker processes; 0 = CPU count")
    operator_token: str | None = Field(None, min_length=16)
    catalog_path: str | None = None

    # Plans and credits.
    free_credits: Micros = Field("500.00", validate_default=True)
    free_credit_validity_s: Seconds = 90 * DAY
    low_balance_threshold: Micros = Field("50.00", validate_default=True)
    topup_min: Micros = Field("100.00", validate_default=True)
    topup_max: Micros = Field("20000.00", validate_default=True)
    deduction_order: Literal["free_first", "paid_first"] = "free_first"

    # Sessions and limits.
    session_block_s: Seconds = 900.0
    session_idle_s: Seconds = 900.0
    rate_per_minute: int = Field(600, ge=1)
    rate_per_hour: int = Field(18_000, ge=1)
    rate_minute_window_s: Seconds = 60.0
    rate_hour_window_s: Seconds = 3600.0
    idempotency_ttl_s: Seconds = DAY
    # Deliveries of one idempotency key that are served (the original included); the
    # next is refused 409 duplicate_delivery.
    idempotency_max_deliveries: int = Field(5, ge=1, le=1000)
    # A charge not confirmed as forwarded within this window (the gateway died between
    # the charge and the forward) is refunded by the sweeper.
    refund_window_s: Seconds = 120.0
    # Local state that must survive a crash of the process (forward confirmations).
    state_dir: str = "creditgate-state"

    # Admission engine. metering=false proxies without admission: a benchmark
    # baseline, never for production.
    metering: bool = True
    fail_mode: Literal["closed", "open"] = "closed"
    redis_timeout_s: Seconds = 0.5
    batch_max: int = Field(256, ge=1, le=10_000)
    # An admission call goes out once this many messages wait (or the loop pass ends).
    batch_dispatch_at: int = Field(32, ge=1, le=10_000)
    # Traffic workers: collect and freeze the start-up heap (the collector never walks
    # it again) and run generation-0 collections this rarely (allocations).
    # Per-request metrics are summed in each process and written to the shared
    # Prometheus values this often (and at every scrape of the process itself).
    metrics_flush_s: Seconds = 1.0
    gc_freeze: bool = True
    gc_threshold: int = Field(50_000, ge=100)
    # "async": Redis's own asynchronous replication (a master killed mid-run loses what
    # it had not yet sent to its replica). "replicated": each admission call is followed
    # by WAIT for redis_replicas replicas and only then acknowledged.
    redis_durability: Literal["async", "replicated"] = "async"
    redis_replicas: int = Field(1, ge=1, le=16)

    # Proxy.
    default_upstream_url: str | None = None
    upstream_connect_timeout_s: Seconds = 2.0
    upstream_read_timeout_s: Seconds = 30.0
    max_body_bytes: int = Field(1 << 20, ge=1)
    refund_on: RefundOn = ["connect", "timeout", "5xx"]
    shutdown_grace_s: Seconds = 20.0
    # A connection must deliver a complete request head within this many seconds of
    # opening (or of its previous response): slow-header clients are cut off.
    header_timeout_s: Seconds = 15.0
    channels: dict[str, ChannelRule] = Field(default_factory=dict)

    # Traffic server (issue 13): "aiohttp" serves the traffic port with aiohttp alone;
    # "fast" parses requests with httptools and serves small /hooks messages to http://
    # bots on a lean path, handing everything else to the aiohttp app on the connection.
    traffic_server: Literal["aiohttp", "fast"] = "aiohttp"

    # HTTP conformance (issue 13): a request body must keep arriving; a read that waits
    # this long for its next bytes ends the request 408 (a stalled upload holds nothing).
    body_timeout_s: Seconds = 30.0

    # Channel authentication (docs/design.md §3). Channel secrets are stored encrypted with a key
    # derived from secret_key; without one it is derived from operator_token (demo
    # convenience: rotating that token then needs every channel secret entered anew).
    secret_key: str | None = Field(None, min_length=16)
    require_channel_auth: bool = False
    slack_signature_window_s: Seconds = 300.0
    channel_jwt_leeway_s: float = Field(300.0, ge=0, description="clock skew allowed on JWTs")
    msteams_openid_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    msteams_keys_max_age_s: Seconds = DAY
    # An unknown key id refetches the keys at most this often (a forged kid costs nothing).
    msteams_keys_min_refresh_s: float = Field(30.0, ge=0)
    channel_secret_max_age_s: Seconds = 1.0

    # Durable usage.
    flush_interval_s: Seconds = 5.0
    flush_bucket_s: int = Field(60, ge=1, le=3600)
    flush_grace_s: Seconds = 5.0
    # How often Redis's copy of the store's configuration and grants is checked and
    # repaired where an admin change reached the store but not Redis.
    projection_check_interval_s: Seconds = 60.0

    # Flush quarantine: a bucket the store rejects this many times in a row (bad data, not
    # an outage) goes to the dead-letter table, so one bucket never stalls the flusher.
    flush_quarantine_attempts: int = Field(3, ge=1, le=100)

    # Owner notifications.
    webhook_timeout_s: Seconds = 5.0
    webhook_max_attempts: int = Field(12, ge=1)

    # Egress (SSRF guard, docs/design.md §3): networks (CIDR) and host names ("bot.internal",
    # "*.internal") that upstream and webhook URLs may reach although they are loopback,
    # private or link-local. The gateway's own host and ports stay refused regardless.
    egress_allow: EgressAllow = Field(default_factory=list)

    # Payments: free credits once per user, paid top-ups through Stripe Checkout. Checkout
    # answers 503 payments_not_configured until the secret key is set; the provider
    # webhook likewise until the webhook secret is set. Secrets never appear in reprs.
    free_credits_once_per_user: bool = True
    stripe_api_base: str = "https://api.stripe.com"
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_webhook_tolerance_s: int = Field(300, ge=1, le=86_400)
    stripe_timeout_s: Seconds = 20.0
    stripe_max_network_retries: int = Field(2, ge=0, le=5)
    checkout_currency: Literal["usd"] = "usd"
    checkout_success_url: str = "http://localhost:8081/ui?checkout=success"
    checkout_cancel_url: str = "http://localhost:8081/ui?checkout=cancelled"

    # Owner console at /ui (issue 11): sign-in session lifetime, the session cookie's
    # Secure flag ("auto": when the request came over TLS, directly or per
    # X-Forwarded-Proto), and the help links it shows.
    console_session_ttl_s: Seconds = 12 * 3600.0
    console_secure_cookie: Literal["auto", "always", "never"] = "auto"
    console_docs_url: str = "https://docs.example.com/creditgate"
    console_community_url: str = "https://community.example.com/c/creditgate"
    console_support_url: str = "https://support.example.com/tickets/new"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # First run / operator UX: "auto" is text when stderr is a terminal, else JSON; the
    # access log (one INFO line per request, refusals with their code, never a token or
    # a body) defaults to on when stderr is a terminal.
    log_format: Literal["json", "text", "auto"] = "auto"
    access_log: bool | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        return check_store_url(value)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.topup_min > self.topup_max:
            raise ValueError("topup_min must not exceed topup_max")
        if self.rate_minute_window_s > self.rate_hour_window_s:
            raise ValueError("rate_minute_window_s must not exceed rate_hour_window_s")
        if not self.stripe_api_base.startswith(("https://", "http://")):
            raise ValueError("stripe_api_base must be an http(s) URL")
        return self

    @property
    def redis_cluster(self) -> bool:
        return self.redis_url.startswith("redis+cluster://")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings layers flags, environment and file itself and passes the result
        # as init kwargs; a direct ``Settings(...)`` lets its kwargs beat the environment.
        if _LAYERED.get():
            return (init_settings,)
        return init_settings, env_settings


class SettingsError(ValueError):
    """Settings that cannot start creditgate; the message (one line) names each bad one."""


_LAYERED: contextvars.ContextVar[bool] = contextvars.ContextVar("layered", default=False)
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
        if _SERVICE_LINK.match(upper) or (upper.endswith("_PORT") and _LINK_VALUE.match(env[key])):
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
    token = _LAYERED.set(True)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    finally:
        _LAYERED.reset(token)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
