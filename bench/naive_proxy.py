"""A naive metering proxy, the baseline creditgate must beat: one process, and one
redis-py ``EVALSHA`` of the real ``admit.lua`` per request (no batching), then the
request is forwarded with one shared ClientSession and the answer buffered.

    python -m bench.naive_proxy --port P --redis URL --upstream URL
"""

from __future__ import annotations

import argparse
import time

import aiohttp
import uvloop
from aiohttp import web

from config import load_settings
from meter.admission.admitter import Admitter
from meter.redis_layer import keys
from meter.redis_layer.client import connect
from meter.redis_layer.scripts import register

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}


def make_app(redis_url: str, upstream: str) -> web.Application:
    settings = load_settings(env={}, redis_url=redis_url)
    counter = iter(range(1, 1 << 62))

    async def handler(request: web.Request) -> web.Response:
        app_id = request.match_info["app_id"]
        channel = request.match_info["channel"]
        user = request.headers.get("X-Channel-User-Id", "")
        ws = keys.workspace_of(app_id) or ""
        now = time.time()
        token = f"naive.{next(counter):x}"
        res = await request.app["admit"](
            keys=[keys.ws_prefix(ws)],
            args=[
                *request.app["adm"].argv_head(now),
                f"{app_id}\t{channel}\t{user}\t\t{token}\tm",
            ],
        )
        if res[0] & 15:  # status = code + 16 x flags (meter/admission/decision.py)
            return web.json_response({"code": int(res[0]) & 15}, status=402)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        tail = request.match_info.get("tail", "")
        async with request.app["http"].request(
            request.method, f"{upstream}/{tail}", headers=headers, data=body or None
        ) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            return web.Response(status=up.status, body=data, headers=out)

    async def ctx(app: web.Application) -> object:
        client = connect(redis_url)
        app["admit"] = register(client, "admit")
        app["adm"] = Admitter(client, settings)  # only for admit.lua's argument head
        app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        yield
        await app["http"].close()
        await client.aclose()

    app = web.Application()
    app.cleanup_ctx.append(ctx)  # type: ignore[arg-type]
    app.router.add_route("*", "/hooks/{channel}/{app_id}", handler)
    app.router.add_route("*", "/hooks/{channel}/{app_id}/{tail:.*}", handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        make_app(args.redis, args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
