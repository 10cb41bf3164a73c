"""Exceptions of the durable store (the same for every backend)."""

from __future__ import annotations


class StoreError(Exception):
    """The store failed (unreachable, misconfigured, or an unexpected database error)."""


class DuplicateKey(StoreError):
    """A row with the same unique key already exists (id, email, token hash, ...)."""


class MissingReference(StoreError):
    """A referenced row (workspace, user, app) does not exist."""


class Retryable(StoreError):
    """A transient conflict between concurrent transactions (deadlock, serialization)."""


class Rejected(StoreError):
    """The database refused the data itself (an invalid value, a violated constraint):
    retrying the same statement with the same data cannot succeed. Every other
    :class:`StoreError` may be transient (connection lost, database restarting)."""


class BadValue(Rejected):
    """The database cannot hold a value given to it (a NUL in text, an integer out of
    range, text it cannot encode): the caller's input got past validation. A violated
    constraint (CHECK, NOT NULL) is a plain :class:`Rejected`: the code's data, not the
    caller's."""


class CapReached(Exception):
    """A capped insert found its owner already at the cap; nothing was written (not a
    failure of the store: the caller answers it, e.g. 409)."""


class NotMember(Exception):
    """The user is not (or no longer) a member of the workspace, which an app's owner
    must be; nothing was written (the caller answers it as for any non-member)."""


class OwnerChanged(Exception):
    """The app is no longer owned by the user the caller's authorization relied on (a
    transfer landed between the check and the write); nothing was written (the caller
    answers it, 409 ``owner_changed``)."""

    def __init__(self, app_id: str, owner_id: str) -> None:
        super().__init__(f"app {app_id} is no longer owned by {owner_id}")
        self.app_id = app_id
        self.owner_id = owner_id


class OwnsApps(Exception):
    """The member still owns apps of the workspace (``app_ids``), so they cannot be
    removed; nothing was written (the caller answers it, 409 ``member_owns_apps``)."""

    def __init__(self, app_ids: list[str]) -> None:
        super().__init__(f"member owns apps {', '.join(app_ids)}")
        self.app_ids = app_ids
