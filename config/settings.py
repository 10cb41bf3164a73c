"""The typed settings of creditgate: one flat model, every knob with its default.

Loaded by :func:`config.loading.load_settings` (flags > ``CREDITGATE_*`` environment >
YAML file > defaults); the value types (money, durations, lists, channel rules) are in
:mod:`config.fields`. Every duration is seconds, so tests can shrink them. The fields
are declared by group, one module each in :mod:`config.groups`; this model combines them
and holds the checks across groups and the tenant shares of the connection caps.
"""

from __future__ import annotations

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.groups.admission import AdmissionSettings
from config.groups.channel_auth import ChannelAuthSettings
from config.groups.console import ConsoleSettings
from config.groups.credits import CreditsSettings
from config.groups.limits import LimitsSettings
from config.groups.logs import LogsSettings
from config.groups.outbound import OutboundSettings
from config.groups.payments import PaymentsSettings
from config.groups.places import PlacesSettings
from config.groups.proxy import ProxySettings
from config.groups.usage import UsageSettings
from config.layered import LayeredSources
from config.urls import check_stripe_api_base

ENV_PREFIX = "CREDITGATE_"


# pydantic lists the fields of the last base first, so the groups go last group first:
# the fields keep the order they had in one class (reprs, dumps, the JSON schema).
class Settings(
    LayeredSources,
    LogsSettings,
    ConsoleSettings,
    PaymentsSettings,
    OutboundSettings,
    UsageSettings,
    ChannelAuthSettings,
    ProxySettings,
    AdmissionSettings,
    LimitsSettings,
    CreditsSettings,
    PlacesSettings,
    BaseSettings,
):
    """Every knob of creditgate, with the defaults of docs/design.md §1."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

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
        if self.ws_send_timeout_s is not None and self.ws_send_timeout_s > self.refund_window_s / 2:
            # A WebSocket message is charged before its send: past the refund window the
            # sweeper refunds it, and a send still waiting could then deliver it for free.
            raise ValueError("ws_send_timeout_s must be at most half of refund_window_s")
        if self.rate_minute_window_s > self.rate_hour_window_s:
            raise ValueError("rate_minute_window_s must not exceed rate_hour_window_s")
        if self.idempotency_ttl_s <= self.channel_jwt_leeway_s:
            # A signed WhatsApp item older than the window less this skew is refused
            # (gateway.channel_stamps): with no window left, every one would be.
            raise ValueError("idempotency_ttl_s must exceed channel_jwt_leeway_s")
        check_stripe_api_base(self.stripe_api_base)  # https, or http to loopback
        return self

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
    def ws_send_s(self) -> float:
        """``ws_send_timeout_s``, or its default: half the refund window, at most the
        WebSocket idle timeout."""
        given = self.ws_send_timeout_s
        return given if given is not None else min(self.refund_window_s / 2, self.ws_idle_timeout_s)

    @property
    def ws_tenant_connections(self) -> int:
        """``ws_max_connections_per_tenant``, or its default."""
        given = self.ws_max_connections_per_tenant
        return given if given is not None else share(self.ws_max_connections)


def share(cap: int) -> int:
    """A tenant's default share of a cap: 3/8, rounded down, at least 1 (docs/design.md)."""
    return max(1, cap * 3 // 8)
