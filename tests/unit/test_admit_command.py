"""The admission call built from pre-encoded bytes is byte for byte the generic command.

:class:`meter.admission.calls.AdmitCalls` encodes the constant part of ``admit.lua``'s
ARGV head once and splices ``now`` and the billing period in per call; these tests pin
what it writes to the pipe to :func:`meter.redis_layer.pipe.encode` of the same
arguments, for EVALSHA and for the EVAL that follows a NOSCRIPT.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from config import load_settings
from meter.admission.calls import AdmitCalls
from meter.admission.decision import Decision
from meter.admission.wire import AdmitArgs, Pending, encode_args
from meter.redis_layer import keys
from meter.redis_layer.pipe import OnReply, encode

NOW = 1_801_234_567.891  # mid-month: the period field is not at a boundary


class Recorder:
    """Stands where the RedisPipe would: keeps each command as written."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, OnReply]] = []

    def send(self, command: bytes, on_reply: OnReply) -> None:
        self.sent.append((command, on_reply))


def pending(args: AdmitArgs) -> Pending:
    future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    return Pending(args.encode(), args.key, args.token, "rid", future)


@pytest.fixture
def calls() -> AdmitCalls:
    # No connection is opened: the client is only asked for its address.
    return AdmitCalls(Redis(host="127.0.0.1", port=1), load_settings(env={}), None)


def test_encode_args_is_the_tuple_encoding() -> None:
    args = AdmitArgs("ws1_app", "web", "u é", "k1", "ab.1f", "m", "d1g3st")
    assert encode_args(*args) == args.encode() == "\t".join(args).encode()
    assert encode_args("a", "web", "u", "", "t", "n") == b"a\tweb\tu\t\tt\tn\t"


async def test_evalsha_and_eval_match_the_generic_encoding(calls: AdmitCalls) -> None:
    chunks = {
        "ws1": [pending(AdmitArgs("ws1_a", "web", f"u{i}", "", f"t.{i}", "m")) for i in range(3)],
        "ws2": [pending(AdmitArgs("ws2_a", "slack", "U1", "Ev1", "t.9", "m", "abc"))],
    }
    pipe = Recorder()
    calls._send_piped(pipe, NOW, list(chunks.items()), lambda: None)  # type: ignore[arg-type]
    head = list(calls.head(NOW))
    assert head[0] == int(NOW * 1000)
    assert len(pipe.sent) == 2
    sha, script = calls._admit.sha, calls._admit.script
    for (ws, chunk), (command, on_reply) in zip(chunks.items(), pipe.sent, strict=True):
        argv = [*keys.ws_keys(ws), *head, *(p.arg for p in chunk)]
        assert command == encode(["EVALSHA", sha, 2, *argv])
        # A server that lost its scripts: the same call as EVAL, with the script's text.
        on_reply(ResponseError("NOSCRIPT No matching script."), True)
        command, _ = pipe.sent.pop()
        assert command == encode(["EVAL", script, 2, *argv])


async def test_head_follows_the_clock(calls: AdmitCalls) -> None:
    """now_ms and the billing period are the only fields that change between calls."""
    pipe = Recorder()
    chunk = [pending(AdmitArgs("ws1_a", "web", "u", "", "t.1", "m"))]
    for now in (NOW, NOW + 40 * 86_400.0):  # the next call lands in another month
        calls._send_piped(pipe, now, [("ws1", chunk)], lambda: None)  # type: ignore[arg-type]
        argv = [*keys.ws_keys("ws1"), *calls.head(now), chunk[0].arg]
        assert pipe.sent[-1][0] == encode(["EVALSHA", calls._admit.sha, 2, *argv])
    first, second = (calls.head(t) for t in (NOW, NOW + 40 * 86_400.0))
    assert first.period != second.period
    assert first._replace(now_ms=0, period="") == second._replace(now_ms=0, period="")
