"""The typed settings of creditgate: one flat model, every knob with its default.

Loaded by :func:`config.loading.load_settings` (flags > ``CREDITGATE_*`` environment >
YAML file > defaults); the value types (money, durations, lists, channel rules) are in
:mod:`config.fields`. Every duration is seconds, so tests can shrink them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.fields import DAY, ChannelRule, EgressAllow, Micros, RefundOn, Seconds
from config.layered import LayeredSources
from config.urls import check_redis_url, check_store_url, check_stripe_api_base

ENV_PREFIX = "CREDITGATE_"


class Settings(LayeredSources, BaseSettings):
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
    # Keyed messages that took no money (inside a paid billing session) whose key is
    # remembered the whole idempotency window, per app and window; past it a key is
    # remembered only the refund window (a later redelivery is a new message). Bounds
    # what anonymous clients can make Redis hold for free (admit_batch.lua free_ttl).
    idempotency_max_free_keys_per_app: int = Field(50_000, ge=1, le=100_000_000)
    # The same across a workspace's apps (a tenant may hold many apps).
    idempotency_max_free_keys_per_workspace: int = Field(100_000, ge=1, le=100_000_000)
    # A charge not confirmed as forwarded within this window (the gateway died between
    # the charge and the forward) is refunded by the sweeper.
    refund_window_s: Seconds = 120.0
    # Local state that must survive a crash of the process (forward confirmations).
    state_dir: str = "creditgate-state"

    # Tenant quotas: every workspace and app costs store rows and Redis hashes (and an
    # app up to idempotency_max_free_keys_per_app keys), so one tenant cannot fill the
    # shared Redis. Workspaces one user owns, and apps in one workspace whoever owns
    # them; one more is 409 too_many_workspaces / too_many_apps. Nobody is exempt
    # (users alone create them): raise the setting for a customer who needs more.
    max_workspaces_per_user: int = Field(20, ge=1, le=100_000)
    max_apps_per_workspace: int = Field(100, ge=1, le=100_000)
    max_channels_per_app: int = Field(20, ge=1, le=10_000)  # one more: 409 too_many_channels

    # Admission engine. metering=false proxies without admission: a benchmark
    # baseline, never for production.
    metering: bool = True
    fail_mode: Literal["closed", "open"] = "closed"
    redis_timeout_s: Seconds = 0.5
    clock_sync_s: Seconds = 15.0  # how often the metering clock re-measures Redis's
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
    # Connections one traffic worker holds to bots: in all (aiohttp's pool), and to one
    # bot (host, port) on both traffic servers, so one tenant's slow bot cannot take
    # them all; a message over the cap waits (within upstream_connect_timeout_s).
    upstream_connections: int = Field(1024, ge=1)
    upstream_connections_per_bot: int = Field(256, ge=1)
    # A tenant's share of those (gateway/tenant_share.py): what the messages of one
    # customer (the owner of the app's workspace) may hold, in all and at one bot; unset,
    # 3/8 of the cap: two tenants at their share leave a quarter to the others (caps of 3
    # or more). A message over its share waits as for a cap (upstream_connect_timeout_s).
    upstream_connections_per_tenant: int | None = Field(None, ge=1)
    upstream_connections_per_tenant_bot: int | None = Field(None, ge=1)
    # WebSockets one traffic worker proxies at once, outside those connections (their bot
    # connections are their own, so open sockets never make a message wait), and what one
    # tenant's apps may hold of them (unset: 3/8); one more upgrade is 503 too_many_websockets.
    # A socket whose client sent no text or binary message for ws_idle_timeout_s (pings, bot
    # messages do not count) is closed 1001 "idle"; for ws_first_message_timeout_s if none yet.
    ws_max_connections: int = Field(1024, ge=1)
    ws_max_connections_per_tenant: int | None = Field(None, ge=1)
    ws_idle_timeout_s: Seconds = 300.0
    ws_first_message_timeout_s: Seconds = 30.0
    ws_linger_s: Seconds = 5.0  # a dropped bot connection's last bytes (gateway/ws_wire.py)
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
    # "fast" is the default: the whole suite passes against both.
    traffic_server: Literal["aiohttp", "fast"] = "fast"

    # HTTP conformance (issue 13): a request body must keep arriving; a read that waits
    # this long for its next bytes ends the request 408 (a stalled upload holds nothing).
    body_timeout_s: Seconds = 30.0

    # Channel authentication (docs/design.md §3). Channel secrets are stored encrypted with a key
    # derived from secret_key; without one it is derived from operator_token (demo
    # convenience: rotating that token then needs every channel secret entered anew).
    secret_key: str | None = Field(None, min_length=16)
    # The key (or operator token) secrets were encrypted with before secret_key changed:
    # still read, and `serve` re-encrypts what it finds under it with the new key.
    secret_key_previous: str | None = Field(None, min_length=16)
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
    # Divides an hour: a bucket never straddles an hour, a day or a billing month.
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
    # Checkouts one workspace may hold open with the provider at once (its API rate limit
    # is one account's, shared by every tenant): those 'creating' or 'open' and started
    # within checkout_open_window_s, the provider's session lifetime (Stripe: 24 h, its
    # maximum), after which an unpaid session is expired there even if its event was
    # lost. One more is 409 too_many_open_checkouts and never reaches the provider.
    checkout_open_max: int = Field(5, ge=1, le=100)
    checkout_open_window_s: float = Field(DAY, ge=60.0, le=DAY)
    checkout_success_url: str = "http://localhost:8081/ui?checkout=success"
    checkout_cancel_url: str = "http://localhost:8081/ui?checkout=cancelled"

    # Owner console at /ui (issue 11): sign-in session lifetime, the session cookie's
    # Secure flag ("auto": when the request came over TLS, directly or per
    # X-Forwarded-Proto), and the help links it shows.
    console_session_ttl_s: Seconds = 12 * 3600.0
    invitation_ttl_s: Seconds = 14 * DAY  # then unanswered invitations expire (decision 0009)
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

    @field_validator("flush_bucket_s")
    @classmethod
    def _flush_bucket_s(cls, value: int) -> int:
        # Usage is stored by bucket start: a bucket straddling a boundary would put usage
        # in the hour (or month) before the one the licence counter counted it in.
        if 3600 % value:
            raise ValueError(
                f"{value} does not divide 3600 (an hour) evenly: use a divisor such as "
                "1, 5, 10, 15, 30, 60, 300, 600, 900 or 3600"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.topup_min > self.topup_max:
            raise ValueError("topup_min must not exceed topup_max")
        if self.upstream_connections_per_bot > self.upstream_connections:
            raise ValueError("upstream_connections_per_bot must not exceed upstream_connections")
        if self.tenant_connections > self.upstream_connections:
            raise ValueError("upstream_connections_per_tenant must not exceed upstream_connections")
        if self.tenant_connections_per_bot > self.upstream_connections_per_bot:
            raise ValueError(
                "upstream_connections_per_tenant_bot must not exceed upstream_connections_per_bot"
            )
        if self.ws_tenant_connections > self.ws_max_connections:
            raise ValueError("ws_max_connections_per_tenant must not exceed ws_max_connections")
        if self.refund_window_s < 1.5 * self.upstream_connect_timeout_s:
            # A message waits for a bot connection up to the connect timeout; past its
            # refund window the sweeper refunds it, and then it would be sent for free.
            # The margin is for its confirmation to reach Redis before the sweeper looks.
            raise ValueError("refund_window_s must be at least 1.5 x upstream_connect_timeout_s")
        if self.rate_minute_window_s > self.rate_hour_window_s:
            raise ValueError("rate_minute_window_s must not exceed rate_hour_window_s")
        check_stripe_api_base(self.stripe_api_base)  # https, or http to loopback
        return self

    @property
    def stripe_livemode(self) -> bool | None:
        """The mode of ``stripe_secret_key`` (``sk_live_``/``rk_live_``: live, ``_test_``:
        test), None when unknown: provider events of the other mode are never acted on."""
        key = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        kind, _, rest = key.partition("_")
        mode = rest.partition("_")[0]
        return mode == "live" if kind in ("sk", "rk") and mode in ("live", "test") else None

    @property
    def tenant_connections(self) -> int:
        """``upstream_connections_per_tenant``, or its default."""
        given = self.upstream_connections_per_tenant
        return given if given is not None else share(self.upstream_connections)

    @property
    def tenant_connections_per_bot(self) -> int:
        """``upstream_connections_per_tenant_bot``, or its default."""
        given = self.upstream_connections_per_tenant_bot
        return given if given is not None else share(self.upstream_connections_per_bot)

    @property
    def ws_tenant_connections(self) -> int:
        """``ws_max_connections_per_tenant``, or its default."""
        given = self.ws_max_connections_per_tenant
        return given if given is not None else share(self.ws_max_connections)

    @property
    def redis_cluster(self) -> bool:
        return self.redis_url.startswith("redis+cluster://")


def share(cap: int) -> int:
    """A tenant's default share of a cap: 3/8, rounded down, at least 1 (docs/design.md)."""
    return max(1, cap * 3 // 8)
