"""Typed keys for the resources ``create_app`` stores on the aiohttp applications.

Both applications (traffic and admin) carry SETTINGS, CATALOG, CLOCK, REDIS and
METRICS; the traffic one adds ADMITTER, HTTP, OWED, PROXY and TRAFFIC_STATS; the admin one STORE
(absent when no store could be opened).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

from config import Catalog, Settings
from gateway.metrics import Metrics
from gateway.owed import Owed
from gateway.proxy import Proxy
from gateway.traffic_stats import TrafficStats
from gateway.ws_budget import WebSockets
from meter.admission.admitter import Admitter
from meter.redis_layer.client import RedisClient
from meter.store import Store

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
STORE = web.AppKey("store", Store)
ADMITTER = web.AppKey("admitter", Admitter)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
OWED = web.AppKey("owed", Owed)
PROXY = web.AppKey("proxy", Proxy)
WEBSOCKETS = web.AppKey("websockets", WebSockets)
TRAFFIC_STATS = web.AppKey("traffic_stats", TrafficStats)
