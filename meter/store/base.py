"""The :class:`Store`: the one async interface of the durable store.

Backends (:mod:`meter.store.sqlite`, :mod:`meter.store.postgres`) subclass it and
provide connections and migrations; everything else is shared, portable SQL.
"""

from __future__ import annotations

from abc import ABC

from meter.store.accounts import Accounts
from meter.store.apps import Apps
from meter.store.channels import Channels
from meter.store.console_sessions import ConsoleSessions
from meter.store.directory import Directory
from meter.store.flush import Flush
from meter.store.ledger import Ledger
from meter.store.licences import Licences
from meter.store.outbox import Outbox
from meter.store.payments import Payments
from meter.store.refund_failures import RefundFailures
from meter.store.reversals import Reversals
from meter.store.sessions import Sessions
from meter.store.tokens import Tokens
from meter.store.usage import Usage
from meter.store.withdrawals import Withdrawals


class Store(
    Accounts,
    Apps,
    Licences,
    Channels,
    Directory,
    Withdrawals,
    Tokens,
    ConsoleSessions,
    Ledger,
    Flush,
    Usage,
    Sessions,
    Outbox,
    Payments,
    Reversals,
    RefundFailures,
    ABC,
):
    """Durable store: accounts, channel secrets, ledger, usage, billing sessions, audit log,
    outbox, payments and their reversals, console sessions.

    Open one with :func:`meter.store.open_store`; connections open lazily on first use
    (or ``await store.connect()``, or ``async with open_store(url) as store``).
    """
