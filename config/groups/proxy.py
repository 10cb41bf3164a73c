"""The proxy: upstreams and their connection caps, WebSockets, bodies, the traffic server.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.fields import ChannelRule, RefundOn, Seconds


class ProxySettings(BaseModel):
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
    # How long a client message (or a pong) may wait for the bot to take it before the
    # bot's connection is dropped (gateway/ws_pump.py); unset, half the refund window, at
    # most ws_idle_timeout_s (Settings.ws_send_s). At most half the refund window.
    ws_send_timeout_s: Seconds | None = None
    max_body_bytes: int = Field(1 << 20, ge=1)
    refund_on: RefundOn = ["connect", "timeout", "5xx"]
    shutdown_grace_s: Seconds = 20.0
    # A connection must deliver a complete request head within this many seconds of
    # opening (or of its previous response): slow-header clients are cut off.
    header_timeout_s: Seconds = 15.0
    # An answer given before its request's body was read to the end (413, 408, a refusal)
    # on an aiohttp-served connection: the rest of the body is read and dropped for up to
    # this many seconds, so a client still sending it reads the answer instead of a reset;
    # then the connection is closed (aiohttp's lingering_time). The tests set it low.
    body_linger_s: Seconds = 10.0
    channels: dict[str, ChannelRule] = Field(default_factory=dict)

    # Traffic server (issue 13): "aiohttp" serves the traffic port with aiohttp alone;
    # "fast" parses requests with httptools and serves small /hooks messages to http://
    # bots on a lean path, handing everything else to the aiohttp app on the connection.
    # "fast" is the default: the whole suite passes against both.
    traffic_server: Literal["aiohttp", "fast"] = "fast"

    # HTTP conformance (issue 13): a request body must keep arriving; a read that waits
    # this long for its next bytes ends the request 408 (a stalled upload holds nothing).
    body_timeout_s: Seconds = 30.0
    # This deployment's received-by in the Via entry it appends to forwarded requests;
    # a request carrying it (that entry, whole) has looped: 508 (gateway/via.py). Every
    # replica of a deployment sets the same; chained deployments set different ones.
    via_name: str = Field("creditgate", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
    # The admin port's (API, console sign-in, provider webhook): a request body must be
    # in, whole, within this many seconds of its first read, else 408 and the connection
    # closed (an admin call is decided again once its body is in: gateway.admin_api.http).
    admin_body_timeout_s: Seconds = 15.0
    # The admin port's streamed exports (the sessions CSV): each part written (a page of
    # rows) must be taken by the client within this many seconds, else the connection is
    # cut without the final chunk (a client that stops reading holds nothing).
    export_stream_timeout_s: Seconds = 30.0
