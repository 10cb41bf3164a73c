"""What the tests share, imported as ``tests.support.<module>``:

* ``servers``: real redis-server, Redis Cluster, PostgreSQL and Prometheus on loopback,
  one module a kind, and their pytest fixtures (``servers.fixtures``);
* ``settings``: the one settings factory; ``clock``: the one test clock;
* ``bot``: a counting bot, a WebSocket echo bot, an in-process gateway on real sockets
  and the ``bot``, ``http``, ``rclient`` and ``seeded_gateway`` fixtures; ``serving``:
  ``creditgate serve`` as a subprocess;
* ``adminkit``: the admin API on a real socket, its settings and the ``any_admin``
  fixture; ``receiver`` and ``stripe_standin``: loopback stand-ins for a webhook
  receiver and Stripe's API;
* ``channel_keys``: channel secrets, signatures and chat tokens as channels make them;
* ``metering`` and ``flushkit``: helpers of the metering core and flusher tests;
* ``model``: the pure-Python model of the admission scripts.

``tests/conftest.py`` loads the fixtures once for the whole tree (``pytest_plugins``).
"""
