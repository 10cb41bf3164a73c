"""The fixtures every test may use, loaded once for the whole tree (tests/support/):

* servers (``tests.support.servers.fixtures``): ``redis_server``, ``redis_url``,
  ``redis_cluster``, ``postgres_server``, ``pg_dsn``; tests are marked ``cluster`` and
  ``postgres`` by the servers they use;
* the gateway side (``tests.support.bot``): ``bot`` (a counting bot per test), ``http``
  (a client session) and ``rclient`` (a Redis client on ``redis_url``);
* ``connects`` (``tests.support.connect_watch``): the addresses a test connected to;
* ``any_admin`` (``tests.support.adminkit``): the admin server on each store;
* every ``Admitter`` made by ``tests.support.metering.admitter`` is closed after its test.
"""

pytest_plugins = [
    "tests.support.servers.fixtures",
    "tests.support.bot",
    "tests.support.connect_watch",
    "tests.support.adminkit",
    "tests.support.metering",
    "tests.support.receiver",
]
