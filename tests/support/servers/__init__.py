"""Real servers on free loopback ports, one module a kind: ``redis_server``, ``cluster``
(Redis Cluster), ``postgres``, ``prometheus``; ``process`` has what they share and ``resp``
a tiny synchronous Redis client. Plain helpers (no pytest) except ``prometheus``; the
bench scripts use them too. Every server listens on 127.0.0.1 only, keeps its files in
the given work directory and is stopped by ``stop()``; an ``atexit`` hook kills whatever
is still running when the interpreter exits. The pytest fixtures are in ``fixtures``.

Example (outside pytest)::

    with start_redis(Path(tmp)) as redis, start_postgres(Path(tmp) / "pg") as pg:
        print(redis.url, pg.dsn)
"""

from tests.support.servers.cluster import RedisCluster, start_redis_cluster
from tests.support.servers.postgres import PostgresServer, find_pg_bin, start_postgres
from tests.support.servers.process import HOST, ServerError, free_port
from tests.support.servers.redis_server import RedisServer, start_redis
from tests.support.servers.resp import RedisReplyError, redis_command

__all__ = [
    "HOST",
    "PostgresServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "ServerError",
    "find_pg_bin",
    "free_port",
    "redis_command",
    "start_postgres",
    "start_redis",
    "start_redis_cluster",
]
