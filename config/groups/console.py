"""The owner console at /ui: sessions, invitations, cookie, help links.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from config.fields import DAY, Seconds


class ConsoleSettings(BaseModel):
    # Owner console at /ui (issue 11): sign-in session lifetime, the session cookie's
    # Secure flag ("auto": when the request came over TLS, directly or as any
    # X-Forwarded-Proto value or Forwarded proto= says), and the help links it shows.
    console_session_ttl_s: Seconds = 12 * 3600.0
    invitation_ttl_s: Seconds = 14 * DAY  # then unanswered invitations expire (decision 0009)
    console_secure_cookie: Literal["auto", "always", "never"] = "auto"
    console_docs_url: str = "https://docs.example.com/creditgate"
    console_community_url: str = "https://community.example.com/c/creditgate"
    console_support_url: str = "https://support.example.com/tickets/new"
