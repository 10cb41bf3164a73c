"""HTTP/1.1 rules the traffic port enforces on top of aiohttp's parser (RFC 9110, 9112).

The parser (llhttp) settles the framing: a request with both Content-Length and
Transfer-Encoding, a malformed or repeated Content-Length, an obfuscated Transfer-Encoding,
bare LF or control characters in the head are 400 and the connection is closed. What it
lets through and a proxy in front of a bot must still refuse, because the gateway would
meter one thing and the bot receive another:

* a version other than HTTP/1.0 or 1.1: 505;
* an invalid ``Host``, or an absolute-form target naming another host than ``Host``: 400
  (the bot would be told a host the request did not name);
* a transfer coding other than a single ``chunked``: 501 (the gateway does not decode
  them; the coded bytes would reach the bot as the body);
* a head over :data:`HEAD_LIMIT` bytes in all: 431 (each field is limited by the parser,
  their sum is not);
* a forwarding chain (:data:`CHAINED`) over :data:`CHAIN_LIMIT` bytes once its lines are
  joined: 431 (the gateway forwards it as one line, with the peer appended; a chain sent
  as many short lines would otherwise reach the bot as a line longer than any the gateway
  takes, and a bot's server refuses such a line: nginx and aiohttp at 8 KiB);
* a header the gateway decides by (channel user, idempotency key, credentials) given
  more than once: 400 (the gateway would decide by one value, the bot might read another);
* a ``Connection`` header listing one of them: 400 (a proxy drops what ``Connection``
  lists, so the gateway would decide by a value the bot never sees: an
  ``Idempotency-Key`` hidden from the bot has each redelivery answered anew, charged once).

``Expect: 100-continue`` is answered when the body is first read
(:func:`send_continue`), so a refused message gets its refusal, never a 100 first; that
refusal closes the connection, since the client may or may not send the body it was not
asked for. Another expectation is 417. These refusals close the connection too, and so
does the answer to a chunked request (see :func:`http_rules`: trailers leak otherwise).
"""

from __future__ import annotations

import re

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web
from yarl import URL

from gateway.problems import INTERIM_BYTES, Handler, Problem, problem_response

HEAD_LIMIT = 64 * 1024
# uri-host [":" port] (RFC 3986): an IP literal or a reg-name; empty is allowed.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?")
# Headers the gateway decides by: one value each, or the bot could read another.
SINGLE = (
    "Host",
    "X-Channel-User-Id",
    "Idempotency-Key",
    "X-Request-Id",
    "Authorization",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "X-Hub-Signature-256",
    "Content-Type",
)
SINGLE_LOWER = frozenset(name.lower().encode() for name in SINGLE)  # for the fast path
# List headers the gateway appends to (gateway.forwarding), and the most bytes of one,
# joined, that it takes: with the peer appended the line stays under 8 KiB.
CHAINED = ("X-Forwarded-For", "Forwarded", "Via")
CHAINED_LOWER = frozenset(name.lower().encode() for name in CHAINED)
CHAIN_LIMIT = 8000
_SINGLE_TOKENS = frozenset(name.lower() for name in SINGLE)
_CONTINUE = web.RequestKey("creditgate.expect_continue", bool)  # True while a 100 is owed
_CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


def body_stalled(timeout: float) -> Problem:
    return Problem(
        408, "body_timeout", "Request timeout", f"no body bytes arrived for {timeout:g} s"
    )


def _refuse(status: int, code: str, title: str, detail: str) -> web.Response:
    resp = problem_response(status, code, title, detail)
    resp.force_close()
    return resp


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The traffic routes' ``expect_handler``: defers the 100 until the body is read."""
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no 100 (RFC 9110 §10.1.1): the expectation is ignored
    if request.headers.get("Expect", "").lower() == "100-continue":
        request[_CONTINUE] = True
        return None
    return _refuse(417, "expectation_failed", "Expectation failed", "only 100-continue")


async def send_continue(request: web.Request) -> None:
    """Ask for the body now, if the client waits for a 100 (once per request)."""
    if request.get(_CONTINUE):
        request[_CONTINUE] = False
        await request.writer.write(_CONTINUE_LINE)
        request[INTERIM_BYTES] = len(_CONTINUE_LINE)  # a refusal after it is still answered


def valid_host(value: str) -> bool:
    """Whether ``value`` is a valid ``Host`` field value (RFC 9110 §7.2)."""
    return _HOST.fullmatch(value) is not None


def lists_decided(connection: str) -> bool:
    """Whether a ``Connection`` field value lists a header of :data:`SINGLE`."""
    return any(token.strip().lower() in _SINGLE_TOKENS for token in connection.split(","))


def _host_problem(request: web.Request) -> str | None:
    hosts = request.headers.getall("Host", ())
    host = hosts[0] if hosts else None
    if host is not None and not valid_host(host):
        return "the Host header is not a valid host"
    target = request.raw_path
    if target.startswith("/") or target == "*":
        return None
    url = URL(target)  # absolute-form: its authority must be the Host (RFC 9112 §3.2)
    if not url.is_absolute() or url.raw_host is None or host is None:
        return "an absolute-form target needs a Host naming its authority"
    named = URL(f"{url.scheme}://{host}/")
    if (named.raw_host or "").lower() != url.raw_host.lower() or named.port != url.port:
        return "the target names another host than the Host header"
    return None


def _problem(request: web.Request) -> web.Response | None:
    if request.version not in (HttpVersion11, HttpVersion10):
        return _refuse(505, "http_version_not_supported", "HTTP version not supported",
                       "HTTP/1.1 or HTTP/1.0 only")  # fmt: skip
    if sum(len(k) + len(v) for k, v in request.raw_headers) > HEAD_LIMIT:
        return _refuse(431, "header_fields_too_large", "Request header fields too large",
                       f"the limit is {HEAD_LIMIT} bytes of header fields")  # fmt: skip
    headers = request.headers
    for name in CHAINED:
        lines = headers.getall(name, ())
        if lines and sum(map(len, lines)) + 2 * (len(lines) - 1) > CHAIN_LIMIT:
            return _refuse(431, "header_fields_too_large", "Request header fields too large",
                           f"{name} is over {CHAIN_LIMIT} bytes, its lines joined")  # fmt: skip
    for name in SINGLE:
        if len(headers.getall(name, ())) > 1:
            return _refuse(400, "duplicate_header", "Duplicate header",
                           f"{name} may be given once")  # fmt: skip
    if any(lists_decided(value) for value in headers.getall("Connection", ())):
        return _refuse(400, "invalid_connection_header", "Invalid Connection header",
                       "Connection lists a header the gateway decides by")  # fmt: skip
    host_problem = _host_problem(request)
    if host_problem is not None:
        return _refuse(400, "invalid_host", "Invalid host", host_problem)
    if "Transfer-Encoding" in headers:
        codings = [
            c.strip().lower() for v in headers.getall("Transfer-Encoding") for c in v.split(",")
        ]
        if codings != ["chunked"]:
            return _refuse(501, "unsupported_transfer_coding", "Transfer coding not supported",
                           "only chunked")  # fmt: skip
    return None


@web.middleware
async def http_rules(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The rules of the module, before anything else of the traffic port."""
    refused = _problem(request)
    if refused is not None:
        return refused
    return await handler(request)  # some answers close: see close_announced


async def close_announced(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the traffic and admin apps: whether the connection
    closes after this answer is decided as its head is written, so the head says
    ``Connection: close`` (RFC 9112 §9.6). A streamed answer (the proxy's) is prepared
    inside the handler: closed once the handler returned, its head would not say so, and
    a keep-alive client would send its next request into the close. aiohttp writes
    ``Connection`` before this signal runs: set here."""
    if _close_after(request, response):
        response.headers[hdrs.CONNECTION] = "close"


def _asks_upgrade(request: web.Request) -> bool:
    headers = request.headers
    if "Upgrade" not in headers:
        return False
    tokens = (t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(","))
    return "upgrade" in tokens


def _close_after(request: web.Request, resp: web.StreamResponse) -> bool:
    """Close the connection after ``resp`` if the request says so; whether it does."""
    # A 100 still owed: answered without asking for the body (see the module). Chunked:
    # aiohttp's C parser (3.14) keeps the last trailer field of a chunked body and
    # hands it to the next request on the connection as its first header: a trailer
    # "X-Channel-User-Id: victim" would name the next request's user. No request
    # follows a chunked one on a connection.
    if (
        request.get(_CONTINUE)
        or "Transfer-Encoding" in request.headers
        # Any other answer to an upgrade request (h2c, a WebSocket refused): aiohttp's
        # parser takes what follows for the new protocol and never reads it as HTTP.
        or (resp.status != 101 and _asks_upgrade(request))
    ):
        resp.force_close()
        return True
    return False
