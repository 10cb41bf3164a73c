"""The demo's sample bot: echoes each message back as JSON (and WebSocket messages).

``python -m gateway.demo_bot --port P`` serves it on 127.0.0.1:P.
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web


async def echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"bot heard: {msg.data}")
        return ws
    body = await request.text()
    return web.json_response(
        {
            "reply": f"bot heard: {body[:200]}" if body else "bot is here",
            "path": request.path_qs,
            "user": request.headers.get("X-Channel-User-Id"),
        }
    )


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
