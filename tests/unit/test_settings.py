"""Settings that must agree with each other or with the calendar."""

from __future__ import annotations

import calendar

import pytest
from pydantic import ValidationError

from config import Settings, load_settings
from config.loading import SettingsError
from config.settings import share
from meter.redis_layer.billing_period import billing_period


@pytest.mark.parametrize("width", [7, 11, 1000, 2000, 3599])
def test_a_flush_bucket_that_does_not_divide_an_hour_is_refused(width: int) -> None:
    with pytest.raises(ValidationError, match="does not divide 3600"):
        Settings(flush_bucket_s=width)
    assert not settings_accept(flush_bucket_s=width)  # the sweep below agrees with Settings
    assert settings_accept(flush_bucket_s=60)


def settings_accept(**values: object) -> bool:
    """Whether ``Settings(**values)`` is valid: the model's whole validation (every field,
    every validator, the cross-field checks) without reading the environment for each
    field, which is what makes ``Settings(...)`` cost 6 ms (kwargs beat the environment
    anyway). pydantic's own ``BaseModel.__init__`` runs exactly this."""
    try:
        Settings.__pydantic_validator__.validate_python(
            values, self_instance=Settings.__new__(Settings)
        )
    except ValidationError:
        return False
    return True


def test_every_flush_bucket_allowed_starts_in_the_month_of_its_messages() -> None:
    """A message at 2027-02-01 00:00:03 is counted in February by the licence counter:
    its bucket must start in February too, whatever width is allowed."""
    t = calendar.timegm((2027, 2, 1, 0, 0, 3))
    allowed = []
    for width in range(1, 3601):
        if not settings_accept(flush_bucket_s=width):
            continue
        allowed.append(width)
        assert billing_period(t // width * width) == billing_period(t), width
    assert allowed == [w for w in range(1, 3601) if 3600 % w == 0]


def test_a_tenants_share_defaults_to_three_eighths_and_fits_the_cap() -> None:
    settings = Settings()
    assert (settings.tenant_connections, settings.tenant_connections_per_bot) == (384, 96)
    assert settings.ws_tenant_connections == 384
    caps = {"upstream_connections": 10, "upstream_connections_per_bot": 2}
    small = Settings(**caps)
    assert (small.tenant_connections, small.tenant_connections_per_bot) == (3, 1)
    # Any two tenants at their share leave a quarter of a cap (of 3 or more) to others.
    for cap in range(3, 2000):
        assert cap - 2 * share(cap) >= cap / 4
        assert share(cap) >= 1
    assert share(1) == share(2) == 1
    assert Settings(**caps, upstream_connections_per_tenant=10).tenant_connections == 10
    for name, value in (("", 11), ("_bot", 3), ("", 0)):
        with pytest.raises(ValidationError):
            Settings(**caps, **{f"upstream_connections_per_tenant{name}": value})


def test_tenant_quotas_default_to_20_workspaces_a_user_and_100_apps_a_workspace() -> None:
    settings = Settings()
    assert (settings.max_workspaces_per_user, settings.max_apps_per_workspace) == (20, 100)
    for name in ("max_workspaces_per_user", "max_apps_per_workspace"):
        with pytest.raises(ValidationError, match=name):
            Settings(**{name: 0})


@pytest.mark.parametrize(
    "url",
    ["http://api.stripe.com", "http://10.0.0.5:12111", "ftp://api.stripe.com", "https://",
     "api.stripe.com", "http://127.0.0.1.evil.test", "http://[::1"],
)  # fmt: skip
def test_stripe_api_base_is_https_but_for_a_loopback_stand_in(url: str) -> None:
    # The secret key goes in every request: never in clear text off the machine.
    with pytest.raises(ValidationError, match=r"stripe_api_base .* must be an https URL"):
        Settings(stripe_api_base=url)


@pytest.mark.parametrize(
    "url",
    ["https://api.stripe.com", "https://stripe.internal:8443/", "http://127.0.0.1:12111",
     "http://127.8.0.1", "http://localhost:9", "http://[::1]:9"],
)  # fmt: skip
def test_stripe_api_base_accepted(url: str) -> None:
    assert Settings(stripe_api_base=url).stripe_api_base == url


def test_the_idempotency_window_must_outlast_the_channel_clock_skew() -> None:
    """A signed WhatsApp item older than the window less the skew is refused
    (gateway.channel_stamps): with no window left, every one would be."""
    with pytest.raises(ValidationError, match="must exceed channel_jwt_leeway_s"):
        Settings(idempotency_ttl_s=300, channel_jwt_leeway_s=300)
    assert settings_accept(idempotency_ttl_s=301, channel_jwt_leeway_s=300)


def test_the_websocket_send_deadline_defaults_to_half_the_refund_window() -> None:
    """Unset, the deadline it replaced (min(half the refund window, the idle timeout));
    set, its own; never over half the refund window: a message is charged before its
    send, and one still being sent past the window would be refunded, then delivered."""
    assert Settings().ws_send_s == 60.0
    assert Settings(refund_window_s=10).ws_send_s == 5.0
    assert Settings(ws_idle_timeout_s=3).ws_send_s == 3.0
    assert Settings(ws_send_timeout_s=1).ws_send_s == 1.0
    assert Settings(ws_send_timeout_s=60).ws_send_s == 60.0
    with pytest.raises(ValidationError, match="ws_send_timeout_s must be at most half"):
        Settings(ws_send_timeout_s=61)
    with pytest.raises(ValidationError, match="ws_send_timeout_s must be at most half"):
        Settings(refund_window_s=10, ws_send_timeout_s=5.5)


def test_the_stripe_lookup_bound_is_a_setting_of_5_s_by_default() -> None:
    """It was a constant (gateway.payments.LOOKUP_TIMEOUT_S): tests could not give the
    lookups that must succeed a hang bound. A bound of 0 or less, or no number, stops
    start-up naming the variable."""
    assert Settings().stripe_lookup_timeout_s == 5.0
    env = {"CREDITGATE_STRIPE_LOOKUP_TIMEOUT_S": "60"}
    assert load_settings(env=env).stripe_lookup_timeout_s == 60.0
    for bad, why in (("0", "greater than 0"), ("-1", "greater than 0"), ("5s", "valid number")):
        with pytest.raises(SettingsError, match=f"CREDITGATE_STRIPE_LOOKUP_TIMEOUT_S: .*{why}"):
            load_settings(env={"CREDITGATE_STRIPE_LOOKUP_TIMEOUT_S": bad})
