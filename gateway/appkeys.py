"""Typed keys for the resources ``create_app`` stores on the aiohttp applications.

Both applications (traffic and admin) carry SETTINGS, CATALOG, CLOCK, REDIS and
METRICS; the traffic one adds ADMITTER, HTTP, OWED, PROXY and TRAFFIC_STATS; the admin one STORE
(absent when no store could be opened).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from config import Catalog, Settings
from gateway.metrics import Metrics
from gateway.traffic_stats import TrafficStats
from meter.redis_layer.client import RedisClient
from meter.store import Store

if TYPE_CHECKING:  # the traffic path's types: the admin side does not load its modules
    from gateway.owed import Owed
    from gateway.proxy import Proxy
    from gateway.ws_budget import WebSockets
    from meter.admission.admitter import Admitter

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
STORE = web.AppKey("store", Store)
ADMITTER: web.AppKey[Admitter] = web.AppKey("admitter")
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
OWED: web.AppKey[Owed] = web.AppKey("owed")
PROXY: web.AppKey[Proxy] = web.AppKey("proxy")
WEBSOCKETS: web.AppKey[WebSockets] = web.AppKey("websockets")
TRAFFIC_STATS = web.AppKey("traffic_stats", TrafficStats)
