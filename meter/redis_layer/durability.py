"""``redis_durability = replicated``: an admission is acknowledged only once a replica has it.

Redis replicates asynchronously: a master that dies (``kill -9``) takes the admissions
it acknowledged but had not yet sent to its replica with it, and the promoted replica
would decide those messages afresh. In ``replicated`` mode every ``admit.lua`` call is
followed by ``WAIT <replicas> <timeout>`` pipelined on the same connection (``WAIT``
covers the writes of its own connection), and the decisions are released only when
enough replicas acknowledged. Otherwise the call fails as an ambiguous
:class:`~meter.errors.MeteringUnavailable`: the caller retries with the same token (the
record is found if it survived) or refunds it, as after any lost reply.

On a cluster the connection must reach the master that owns the workspace's slot: a
plain client per master, found through the cluster client's slot map, which is
reloaded when a call meets ``MOVED`` or a dead master.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)
from redis.typing import EncodableT

from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient

_TOPOLOGY = (MovedError, AskError, ClusterDownError, TryAgainError)


class NotReplicated(MeteringUnavailable):
    """The master applied the call but no replica confirmed it in time."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"replicated to {acked} of {wanted} replicas", ambiguous=True)


class ReplicatedCalls:
    """Runs a script and ``WAIT`` on one connection of the workspace's master."""

    def __init__(
        self, client: RedisClient, script: AsyncScript, *, replicas: int, wait_ms: int
    ) -> None:
        self._client = client
        self._script = script
        self._replicas = replicas
        self._wait_ms = max(1, wait_ms)
        self._nodes: dict[str, Redis] = {}

    def _target(self, prefix: str) -> Redis:
        client = self._client
        if not isinstance(client, RedisCluster):
            return client
        node = client.get_node_from_key(prefix)
        if node is None:
            raise MeteringUnavailable("no master owns the workspace's slot", ambiguous=False)
        plain = self._nodes.get(node.name)
        if plain is None:
            kw = client.get_connection_kwargs()
            plain = Redis(
                host=node.host,
                port=int(node.port),
                password=kw.get("password"),
                socket_connect_timeout=kw.get("socket_connect_timeout"),
                socket_keepalive=True,
            )
            self._nodes[node.name] = plain
        return plain

    async def call(self, script_keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """The script's reply (its keys: :func:`~meter.redis_layer.keys.ws_keys`), once
        ``replicas`` replicas hold its writes."""
        for attempt in range(2):
            target = self._target(script_keys[0])
            try:
                async with target.pipeline(transaction=False) as pipe:
                    sha, n = self._script.sha, len(script_keys)
                    pipe.execute_command("EVALSHA", sha, n, *script_keys, *args)
                    pipe.execute_command("WAIT", self._replicas, self._wait_ms)
                    reply, acked = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError):
                await self._reload()
                raise
            if isinstance(reply, NoScriptError) and attempt == 0:
                await target.script_load(self._script.script)
                continue
            if isinstance(reply, _TOPOLOGY):
                await self._reload()  # the slot moved: the next attempt goes to its owner
                raise reply
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < self._replicas:
                raise NotReplicated(int(acked), self._replicas)
            return reply
        raise MeteringUnavailable("script could not be loaded", ambiguous=False)

    async def _reload(self) -> None:
        if isinstance(self._client, RedisCluster):
            try:
                await self._client.nodes_manager.initialize()
            except Exception:  # the next call tries again
                return

    async def close(self) -> None:
        for plain in self._nodes.values():
            await plain.aclose()
        self._nodes.clear()
