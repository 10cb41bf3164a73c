"""How a batch of admissions reaches ``admit.lua``: :class:`AdmitCalls`.

On a plain single server the calls go down a :class:`~meter.redis_layer.pipe.RedisPipe`
and each reply resolves its admissions from a callback (no task, future or timer per
call), each call's command built from bytes encoded ahead of time (only ``now`` and
the billing period change between calls). Cluster, TLS and replicated durability go
through redis-py, one task per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

from config import Settings
from meter.admission.wire import AdmitHead, Pending, fail, resolve
from meter.redis_layer import keys
from meter.redis_layer.billing_period import PeriodCache
from meter.redis_layer.client import RedisClient
from meter.redis_layer.durability import ReplicatedCalls
from meter.redis_layer.pipe import RedisPipe, bulks
from meter.redis_layer.scripts import register, run

Batch = list[tuple[str, list[Pending]]]  # per workspace, its admissions


class AdmitCalls:
    """Sends batches of admissions as ``admit.lua`` calls and resolves their waiters."""

    def __init__(
        self, client: RedisClient, settings: Settings, on_batch: Callable[[int], None] | None
    ) -> None:
        """``on_batch`` is told the size of every ``admit.lua`` call (for metrics)."""
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._on_batch = on_batch
        self._admit = register(client, "admit")
        self._timeout = settings.redis_timeout_s
        # redis_durability=replicated: each call waits for replicas (redis_layer/durability).
        self._replicated = (
            ReplicatedCalls(
                client,
                self._admit,
                replicas=settings.redis_replicas,
                wait_ms=int(settings.redis_timeout_s * 800),
            )
            if settings.redis_durability == "replicated"
            else None
        )
        self._pipe = (
            RedisPipe.for_client(client, settings.redis_timeout_s)
            if self._replicated is None
            else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._period = PeriodCache()
        self._period_bulk = (b"", b"")  # the period and its RESP bulk, as last sent
        self._head_rest = b""  # the head after now_ms, as last sent
        self._ws_bulks: dict[str, bytes] = {}  # workspace -> its keys as RESP bulks
        self._head = AdmitHead.of(settings, 0.0)
        # The head's fields but now_ms (the first) and period never change: encoded once
        # (most of a call's bytes under moderate load, when batches are small).
        fixed = [str(v).encode() for v in self._head]
        at = AdmitHead._fields.index("period")
        assert AdmitHead._fields.index("now_ms") == 0 < at  # the slices below
        self._head_mid, self._head_end = bulks(fixed[1:at]), bulks(fixed[at + 1 :])
        script = self._admit.script
        self._script = script.encode() if isinstance(script, str) else bytes(script)
        # EVALSHA sha numkeys, the two keys (keys.ws_keys), the head, then admissions.
        self._argc = 5 + len(fixed)
        self._evalsha = b"$7\r\nEVALSHA\r\n" + bulks([self._admit.sha.encode()]) + b"$1\r\n2\r\n"

    def head(self, now: float) -> AdmitHead:
        """``admit.lua``'s ARGV before the admissions, as of ``now``."""
        return self._head._replace(now_ms=int(now * 1000), period=self._period(now))

    def send(self, now: float, batch: Batch, done: Callable[[], None]) -> None:
        """Send ``batch`` as of ``now``; ``done()`` once every call is answered."""
        if self._pipe is not None:
            self._send_piped(self._pipe, now, batch, done)
            return
        head: list[EncodableT] = list(self.head(now))
        task = asyncio.get_running_loop().create_task(self._send(head, batch, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_piped(
        self, pipe: RedisPipe, now: float, batch: Batch, done: Callable[[], None]
    ) -> None:
        """One EVALSHA per workspace down the pipe; the replies resolve their waiters.

        Built from bytes kept between calls (a workspace's keys, the head but ``now``, the
        count's line) and without ``%`` formatting, closures or comprehensions: each costs
        a message's worth of instructions a call (one call a message when traffic is light).
        """
        period = self._period(now).encode()
        if period != self._period_bulk[0]:
            self._period_bulk = (period, bulks([period]))
            self._head_rest = b"".join((self._head_mid, self._period_bulk[1], self._head_end))
        at = int(now * 1000)  # the decisions' "at"
        now_ms = str(at).encode()
        head = b"".join((_BULK[len(now_ms)], now_ms, b"\r\n", self._head_rest))
        answered = done if len(batch) == 1 else _countdown(len(batch), done)
        ws_bulks = self._ws_bulks
        for ws, chunk in batch:
            if self._on_batch is not None:
                self._on_batch(len(chunk))
            # Everything after "numkeys": the keys, the head, one argument per admission.
            key = ws_bulks.get(ws)
            if key is None:
                key = bulks([k.encode() for k in keys.ws_keys(ws)])
                if len(ws_bulks) >= _WS_BULKS_MAX:
                    ws_bulks.clear()
                ws_bulks[ws] = key
            parts = [key, head]
            for p in chunk:
                a = p.arg
                parts += (_BULK[len(a)], a, b"\r\n") if len(a) < _BULK_MAX else (bulks([a]),)
            args = b"".join(parts)
            n = self._argc + len(chunk)
            count = _COUNT[n] if n < _BULK_MAX else b"*%d\r\n" % n
            reply = tuple.__new__(_Reply, (self, pipe, chunk, count, args, answered, at, False))
            try:
                pipe.send(b"".join((count, self._evalsha, args)), reply.on_reply)
            except Exception as exc:  # never sent: its waiters must hear, its slot return
                asyncio.get_running_loop().call_soon(reply.on_reply, exc, False)

    async def _send(self, head: list[EncodableT], batch: Batch, done: Callable[[], None]) -> None:
        try:
            if len(batch) == 1 or self._cluster or self._replicated is not None:
                # On a cluster each workspace lives on its own master: separate calls keep
                # one failing master from failing (or stalling) the others' admissions.
                await asyncio.gather(*(self.call(head, ws, chunk) for ws, chunk in batch))
            else:
                await self._pipelined(head, batch)
        finally:
            done()

    async def call(self, head: list[EncodableT], ws: str, chunk: list[Pending]) -> None:
        """One ``admit.lua`` call through redis-py."""
        if self._on_batch is not None:
            self._on_batch(len(chunk))
        args = [*head, *(p.arg for p in chunk)]
        try:
            if self._replicated is not None:
                call = self._replicated.call(keys.ws_keys(ws), args)
            else:
                call = run(self._admit, self._client, keys.ws_keys(ws), args)
            raw = await asyncio.wait_for(call, self._timeout)
        except Exception as exc:  # see fail()
            fail(chunk, exc)
            return
        _decide(chunk, raw, _at(head))

    async def _pipelined(self, head: list[EncodableT], batch: Batch) -> None:
        """Several workspaces on one server, through redis-py: one pipelined round trip.

        redis-py's pipeline would run SCRIPT EXISTS on every execute, so NOSCRIPT is
        handled here instead.
        """
        sha = self._admit.sha
        if self._on_batch is not None:
            for _, chunk in batch:
                self._on_batch(len(chunk))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for ws, chunk in batch:
                    pipe.execute_command(
                        "EVALSHA", sha, 2, *keys.ws_keys(ws), *head, *(p.arg for p in chunk)
                    )
                results = await asyncio.wait_for(pipe.execute(raise_on_error=False), self._timeout)
        except Exception as exc:  # see fail()
            for _, chunk in batch:
                fail(chunk, exc)
            return
        for (ws, chunk), res in zip(batch, results, strict=True):
            if isinstance(res, NoScriptError):
                await self.call(head, ws, chunk)
            elif isinstance(res, Exception):
                fail(chunk, res)
            else:
                _decide(chunk, res, _at(head))

    async def close(self) -> None:
        """Close the pipe and the replicated calls' connection (calls are answered)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pipe is not None:
            self._pipe.close()
        if self._replicated is not None:
            await self._replicated.close()


def _decide(chunk: list[Pending], raw: Any, at: int) -> None:
    """:func:`resolve`, and a reply that does not decode fails the waiters it left
    undecided (the piped route's :meth:`_Reply.on_reply` does the same): raised instead,
    it would end the batch's task with those waiters never answered."""
    try:
        resolve(chunk, raw, at)
    except Exception as exc:
        fail(chunk, exc)


def _at(head: list[EncodableT]) -> int:
    """A call's ``now_ms`` (the head's first argument, :class:`AdmitHead`)."""
    now_ms = head[0]
    return now_ms if isinstance(now_ms, int) else 0


_BULK_MAX = 2048  # longer (never on the fast path: an argument is some 100 bytes) formatted
_BULK = tuple(b"$%d\r\n" % n for n in range(_BULK_MAX))  # a bulk string's first line
_COUNT = tuple(b"*%d\r\n" % n for n in range(_BULK_MAX))  # a command's first line
_WS_BULKS_MAX = 65_536  # workspaces whose keys are kept encoded


def _countdown(calls: int, done: Callable[[], None]) -> Callable[[], None]:
    """``done`` once the last of ``calls`` is answered."""
    left = calls

    def answered() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done()

    return answered


class _Reply(NamedTuple):
    """One EVALSHA's admissions, answered by :meth:`on_reply` (a tuple, made without a
    frame: no closure per call)."""

    calls: AdmitCalls
    pipe: RedisPipe
    chunk: list[Pending]
    line: bytes  # the command's first line
    args: bytes  # everything after "numkeys" (resent as EVAL)
    answered: Callable[[], None]
    at: int  # the call's now_ms
    resent: bool  # as EVAL, after NOSCRIPT

    def on_reply(self, reply: Any, sent: bool) -> None:
        if (
            isinstance(reply, ResponseError)
            and not self.resent
            and str(reply).startswith("NOSCRIPT")
        ):
            # A restarted or flushed server: EVAL loads the script again on the way.
            script = b"$4\r\nEVAL\r\n" + bulks([self.calls._script])
            again = self._replace(resent=True)
            self.pipe.send(b"".join((self.line, script, b"$1\r\n2\r\n", self.args)), again.on_reply)
            return
        try:
            if isinstance(reply, Exception):
                fail(self.chunk, reply, ambiguous=sent)
            else:
                resolve(self.chunk, reply, self.at)
        except Exception as exc:  # a reply that does not decode: no decision
            fail(self.chunk, exc)
        finally:
            self.answered()
