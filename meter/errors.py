"""Domain errors of the metering core; the gateway maps them to HTTP in one place."""

from __future__ import annotations


class MeterError(Exception):
    """Base of every error the metering core raises on purpose."""


class InvalidInput(MeterError, ValueError):
    """Input that can never be valid; ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidChannelUser(InvalidInput):
    """A channel user id or idempotency key that is not 1-256 printable characters."""


class NotFound(MeterError):
    """A workspace, app or user that does not exist (or may not be seen)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"unknown {kind}: {ident}")
        self.kind = kind
        self.ident = ident


class MeteringUnavailable(MeterError):
    """Redis did not answer within the timeout: no decision was taken.

    ``ambiguous`` is true when the request may have reached Redis, so a charge may
    exist; the caller then voids it with a refund by token once Redis is back.
    """

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class Unauthorized(MeterError):
    """No credentials, or credentials that match no user (HTTP 401)."""


class Forbidden(MeterError):
    """The caller can see the resource but its role may not do this (HTTP 403)."""

    def __init__(
        self, message: str = "your role may not do this", *, code: str = "forbidden"
    ) -> None:
        super().__init__(message)
        self.code = code


class Conflict(MeterError):
    """The request contradicts the current state (HTTP 409), e.g. a reused reference."""

    def __init__(self, message: str, *, code: str = "conflict", field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
