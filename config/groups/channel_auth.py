"""Channel authentication: secret encryption keys, signature windows, Teams keys.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.fields import DAY, Seconds


class ChannelAuthSettings(BaseModel):
    # Channel authentication (docs/design.md §3). Channel secrets are stored encrypted with a key
    # derived from secret_key; without one it is derived from operator_token (demo
    # convenience: rotating that token then needs every channel secret entered anew).
    secret_key: str | None = Field(None, min_length=16)
    # The key (or operator token) secrets were encrypted with before secret_key changed:
    # still read, and `serve` re-encrypts what it finds under it with the new key.
    secret_key_previous: str | None = Field(None, min_length=16)
    require_channel_auth: bool = False
    slack_signature_window_s: Seconds = 300.0
    channel_jwt_leeway_s: float = Field(300.0, ge=0, description="clock skew allowed on JWTs")
    msteams_openid_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    msteams_keys_max_age_s: Seconds = DAY
    # An unknown key id refetches the keys at most this often (a forged kid costs nothing).
    msteams_keys_min_refresh_s: float = Field(30.0, ge=0)
    channel_secret_max_age_s: Seconds = 1.0
