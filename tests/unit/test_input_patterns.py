"""Names and values checked against a pattern: ``$`` also matches before a final newline,
so a name followed by one must still be refused (``fullmatch``), never taken as another
name ("web\\n" is not the channel "web", nor a channel of its own)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from config.money import parse_amount
from meter.accounts.addresses import EgressRefused, check_host_name
from meter.accounts.authz import bearer
from meter.accounts.channel_secrets import _check_channel
from meter.accounts.credits import funds_reference
from meter.admission.targets import Targets
from meter.errors import InvalidChannelUser, InvalidInput, Unauthorized
from meter.redis_layer import keys

APP = "abcd_efgh"


def test_an_app_id_or_channel_with_a_final_newline_has_no_workspace() -> None:
    assert keys.workspace_of(APP) == "abcd"
    assert keys.workspace_of(APP + "\n") is None
    assert Targets().workspace(APP, "web", "u", "") == "abcd"
    assert Targets().workspace(APP, "web\n", "u", "") is None
    assert Targets().workspace(APP + "\n", "web", "u", "") is None


@pytest.mark.parametrize("user", ["", "x" * 257, "a\tb", "a\nb", "\ud800"])
def test_a_channel_user_that_cannot_be_sent_is_refused(user: str) -> None:
    with pytest.raises(InvalidChannelUser):
        Targets().workspace(APP, "web", user, "")
    assert Targets().workspace(APP, "web", "x" * 256, "") == "abcd"  # the longest taken


def test_remembered_workspaces_are_well_formed_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    remembered: dict[str, str] = {}
    monkeypatch.setattr(keys, "_WS_OF", remembered)
    monkeypatch.setattr(keys, "_WS_OF_MAX", 2)
    for app in ("x" * 5000, "abcd_", "ABCD_efgh", APP + "\n"):  # asked twice: never cached
        assert keys.workspace_of(app) is None
        assert keys.workspace_of(app) is None
    assert remembered == {}
    ids = [f"ws{i:02d}_app1" for i in range(4)]
    assert [keys.workspace_of(a) for a in ids] == ["ws00", "ws01", "ws02", "ws03"]
    assert remembered == {"ws02_app1": "ws02", "ws03_app1": "ws03"}  # full: forgotten, refilled
    assert [keys.workspace_of(a) for a in ids] == ["ws00", "ws01", "ws02", "ws03"]
    assert len(remembered) <= 2


@pytest.mark.parametrize(
    ("check", "good", "error"),
    [
        (parse_amount, "500.00", ValueError),
        (check_host_name, "bot.internal", EgressRefused),
        (lambda t: bearer(f"Bearer {t}"), "cgu_token", Unauthorized),
        (funds_reference, "ref-1", InvalidInput),
        (_check_channel, "web", InvalidInput),
    ],
    ids=["amount", "host", "bearer", "reference", "channel"],
)
def test_a_final_newline_is_refused(
    check: Callable[[str], object], good: str, error: type[Exception]
) -> None:
    check(good)
    with pytest.raises(error):
        check(good + "\n")
