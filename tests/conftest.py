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

import pytest

pytest_plugins = [
    "tests.support.servers.fixtures",
    "tests.support.bot",
    "tests.support.connect_watch",
    "tests.support.adminkit",
    "tests.support.metering",
    "tests.support.receiver",
]

# The files that take longest, longest first (seconds of test time on the 2-core CI
# machine, `pytest -n 2 --dist worksteal tests --durations=0`, summed per file; a
# clean-clone .ci/run at 280b2bf beside other work, load average 4-6). They run
# first: a worker takes its tests from the front of its queue and the other steals from
# the back, so what is left for the end is short. In collection order, a long file
# collected last (test_flusher_crash, 170 s) ran alone while the other worker sat idle.
SLOW_FIRST = (
    "tests/system/test_crash_refund.py",  # 196
    "tests/system/test_flusher_crash.py",  # 176
    "tests/system/test_schemathesis.py",  # 144, one test
    "tests/system/test_http_conformance.py",  # 71
    "tests/system/test_newcomer.py",  # 69
    "tests/system/test_channel_auth.py",  # 55
    "tests/integration/test_cluster_failover.py",  # 55
    "tests/system/test_redteam.py",  # 51
    "tests/system/test_ws_tls_taken.py",  # 51
    "tests/system/test_refund_credit_back.py",  # 48
    "tests/system/test_tls_bots.py",  # 46
    "tests/integration/test_admission_model.py",  # 45
    "tests/system/test_forwarding_attack.py",  # 43
    "tests/integration/test_flush_rollback.py",  # 43
    "tests/system/test_authz_matrix.py",  # 41
    "tests/system/test_egress_dns.py",  # 41, one test (the others run inside it)
    "tests/integration/test_store.py",  # 40
    "tests/system/test_ws_tls_large.py",  # 40
    "tests/system/test_console_browser.py",  # 39
    "tests/system/test_payments.py",  # 39
    "tests/integration/test_lapse_once.py",  # 38
    "tests/system/test_cli.py",  # 36
    "tests/system/test_reversal_recovery.py",  # 34
    "tests/system/test_abuse_edge.py",  # 33
    "tests/system/test_payments_claims.py",  # 33
    "tests/system/test_ws_shutdown.py",  # 31
    "tests/system/test_bot_connections.py",  # 31
    "tests/system/test_invitations_review.py",  # 30
    "tests/system/test_sessions_csv_access.py",  # 24
    "tests/system/test_token_hygiene.py",  # 24
    "tests/system/test_tenant_share.py",  # 23
    "tests/integration/test_projection_rebuild.py",  # 20
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files of :data:`SLOW_FIRST` first, in its order; every other file after
    them in collection order (a file's own tests keep theirs)."""
    for name in SLOW_FIRST:  # a renamed file must not silently lose its place
        if not (config.rootpath / name).is_file():
            raise pytest.UsageError(f"tests/conftest.py SLOW_FIRST: {name} does not exist")
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(SLOW_FIRST)))
