"""The times of signed WhatsApp items, and when they cannot be told from a replay
(gateway.channel_stamps); clocks are given, never read."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from config.fields import ChannelRule
from gateway.channel_stamps import Stamps, read, refusal, seconds
from gateway.channels import Channels
from gateway.json_pointer import MAX_WALK, TooComplex
from tests.support.samples import sample

TTL, SKEW, NOW = 86_400.0, 300.0, 1_800_000_000.0
WHATSAPP = Channels({}).get("whatsapp")


def inspect(doc: Any, *, authenticated: bool = True) -> Stamps | None:
    body = orjson.dumps(doc)
    return WHATSAPP.inspect({}, body, authenticated=authenticated).stamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1749416383", 1749416383), (1749416383, 1749416383), ("0", 0), ("999999999999", 10**12 - 1),
     ("1000000000000", None), ("", None), ("+1", None), ("1e9", None), ("１２", None),
     ("12\n", None), (1.0, None), (True, None), (-1, None), (None, None), ([1], None)],
)  # fmt: skip
def test_seconds_are_ascii_digits_or_a_json_integer(value: Any, expected: int | None) -> None:
    assert seconds(value) == expected


def test_the_window_is_the_idempotency_window_less_the_skew_and_the_skew_ahead() -> None:
    def why(oldest: float, newest: float) -> str:
        return refusal(Stamps(oldest, newest), NOW, TTL, SKEW)

    assert why(NOW - TTL + SKEW, NOW + SKEW) == ""  # both bounds included
    assert "older than the 86100 s" in why(NOW - TTL + SKEW - 1, NOW)
    assert "in the future" in why(NOW, NOW + SKEW + 1)
    assert refusal(Stamps(0, 0, "no timestamp"), NOW, TTL, SKEW) == "no timestamp"


def test_every_message_and_status_of_a_signed_delivery_is_read() -> None:
    doc = orjson.loads(sample("whatsapp-message.json"))
    status = orjson.loads(sample("whatsapp-status.json"))["entry"][0]["changes"][0]
    doc["entry"][0]["changes"].append(status)
    value = doc["entry"][0]["changes"][0]["value"]
    value["Messages"] = [{**value["messages"][0], "id": "wamid.2", "Timestamp": "1"}]
    assert inspect(doc) == Stamps(1, 1750263773)
    # Unsigned: anyone writes any time, so nothing is read.
    assert inspect(doc, authenticated=False) is None
    # A body with neither has no stamps; an item without one says so.
    assert inspect({"object": "whatsapp_business_account", "entry": []}) is None
    del value["Messages"][0]["Timestamp"], value["Messages"][0]["timestamp"]
    stamps = inspect(doc)
    assert stamps is not None
    assert "no timestamp" in stamps.bad


def test_a_timestamp_pointer_names_a_field() -> None:
    with pytest.raises(ValueError, match="names a field"):
        Channels({"meta": ChannelRule(timestamp_pointers=[""])})


def test_read_is_none_without_items() -> None:
    assert read({"a": 1}, (("a", "*", "t"),)) is None
    assert read([{"t": "5"}, {"t": 7}], (("*", "t"),)) == Stamps(5, 7)


def test_the_items_fields_share_one_walks_bound() -> None:
    """Each item's field was looked up by a walk of its own, outside every bound: a
    signed body of 20,000 statuses (free, in no rate window) cost a worker ~0.3 s, a
    1 MB one of 65,000 ~0.6 s, at every replay. Now one bound holds for all of them."""
    status = {"id": "s", "timestamp": "1"}
    doc = {"entry": [{"changes": [{"value": {"statuses": [status] * (MAX_WALK // 2)}}]}]}
    with pytest.raises(TooComplex):
        read(doc, WHATSAPP.timestamp_pointers)
    unread = WHATSAPP.inspect({}, orjson.dumps(doc), authenticated=True)
    assert unread.unreadable  # refused 422 (gateway.traffic_rules)
    assert unread.stamps is None
    # Meta's own batches are far below it: 5,000 receipts of its six fields are read.
    real = orjson.loads(sample("whatsapp-status.json"))["entry"][0]["changes"][0]["value"]
    receipt = {**real["statuses"][0], "conversation": {"id": "c"}, "pricing": {}}
    doc["entry"][0]["changes"][0]["value"]["statuses"] = [receipt] * 5000
    assert read(doc, WHATSAPP.timestamp_pointers) == Stamps(1750263773, 1750263773)
