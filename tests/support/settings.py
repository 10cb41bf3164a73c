"""The one settings factory of the tests: settings built from code, never from the
environment, and the values tests share (the operator token, the loopback ranges)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config import Settings, load_settings

DEFAULT_REFUND_WINDOW_S = Settings.model_fields["refund_window_s"].default

HOST = "127.0.0.1"
LOOPBACK = ["127.0.0.0/8", "::1"]  # egress_allow of test settings: the bots' addresses
OPERATOR_TOKEN = "operator-token-" + "x" * 24
# The whole suite runs against either traffic server: this variable picks it.
TRAFFIC_SERVER_ENV = "CREDITGATE_TRAFFIC_SERVER"

# The Redis deadline of every test's settings (the production default is 0.5 s). A test
# shares its event loop with the gateway, the bot and hundreds of clients, and the suite
# runs three processes on a 2-core machine: a Redis reply can wait past 0.5 s for the loop,
# and an admission, a lookup or a readiness probe would fail for the machine's speed. (It
# was set only with tmp_path: the Admitters of tests/support/metering.admission and the
# admin servers of adminkit had 0.5 s.) A hang bound, waited out only where Redis is
# paused or stopped on purpose.
REDIS_TIMEOUT_S = 10.0

# The bound of the gateway's connects to the tests' bots on loopback (the production
# default is 2 s): the connect shares its event loop with the test, and a busy machine
# passed 2 s (a 504, the test failed). A hang bound; the settings refuse one over two
# thirds of the refund window, so a test with a short refund window gets that much.
# Tests of the connect timeout, or of a wait for a place past it, set their own. The
# same for the tests' `creditgate serve` (tests.support.serving), which had the 2 s.
CONNECT_TIMEOUT_S = 60.0

# A flusher that moves closed buckets at once, with limits no test reaches by accident.
FAST_FLUSH: dict[str, Any] = {
    "flush_bucket_s": 1,
    "flush_grace_s": 0.5,
    "flush_interval_s": 0.05,
    "session_block_s": 60.0,
    "session_idle_s": 60.0,
    "rate_per_minute": 10_000_000,
    "rate_per_hour": 10_000_000,
    "redis_timeout_s": 30.0,  # a busy 2-core CI box must not turn into refusals
}


def make_settings(
    redis_url: str | None = None,
    tmp_path: Path | str | None = None,
    *,
    operator: bool = False,
    fast_flush: bool = False,
    **overrides: Any,
) -> Settings:
    """Settings for a test: the defaults of docs/design.md, the egress policy allowing
    loopback (where the test bots and receivers live), and

    * ``redis_url``: that Redis;
    * ``tmp_path``: served on loopback by the traffic server ``$CREDITGATE_TRAFFIC_SERVER``
      names (else the setting's default), with a SQLite store and the state directory in it;
    * ``operator``: the admin API's operator token is :data:`OPERATOR_TOKEN`;
    * ``fast_flush``: :data:`FAST_FLUSH`;

    then ``overrides`` (any setting), which win. Always a Redis timeout no busy machine
    reaches (:data:`REDIS_TIMEOUT_S`): tests of Redis timeouts set their own; and a bot
    connect timeout none reaches (:data:`CONNECT_TIMEOUT_S`, at most two thirds of the
    refund window): tests of it set their own.
    """
    base: dict[str, Any] = {"egress_allow": LOOPBACK, "redis_timeout_s": REDIS_TIMEOUT_S}
    if redis_url is not None:
        base["redis_url"] = redis_url
    if tmp_path is not None:
        base.update(
            store_url=f"sqlite:///{tmp_path}/creditgate.db",
            host=HOST,
            state_dir=f"{tmp_path}/state",
        )
        if TRAFFIC_SERVER_ENV in os.environ:  # the suite run against one traffic server
            base["traffic_server"] = os.environ[TRAFFIC_SERVER_ENV]
    if fast_flush:
        base.update(FAST_FLUSH)
    if operator:
        base["operator_token"] = OPERATOR_TOKEN
    base.update(overrides)
    base.setdefault("upstream_connect_timeout_s", connect_bound(base))
    return load_settings(env={}, **base)


def connect_bound(settings: Mapping[str, object]) -> float:
    """The bot connect timeout of a test that sets none (:data:`CONNECT_TIMEOUT_S`, at most
    two thirds of ``settings``' refund window, as the settings require): in-process
    gateways (:func:`make_settings`) and ``creditgate serve`` (tests.support.serving)."""
    refund_window_s = float(str(settings.get("refund_window_s", DEFAULT_REFUND_WINDOW_S)))
    return min(CONNECT_TIMEOUT_S, refund_window_s / 1.5)
