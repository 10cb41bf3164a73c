"""Channel rules: user and idempotency key from headers or JSON pointers, billable or not,
on real channel payload samples (``tests/data/channels``); no server."""

from __future__ import annotations

import orjson
import pytest

from config.fields import ChannelRule
from gateway.channels import Channels, parse_pointer, resolve, values
from tests.support.samples import sample


def test_json_pointer() -> None:
    doc = {"a": [{"b/c": 1, "d~e": "x"}], "": 2}
    assert resolve(doc, parse_pointer("/a/0/b~1c")) == 1
    assert resolve(doc, parse_pointer("/a/0/d~0e")) == "x"
    assert resolve(doc, parse_pointer("/")) == 2
    assert resolve(doc, parse_pointer("")) == doc
    missing = resolve(doc, parse_pointer("/a/1"))
    assert missing is resolve(doc, parse_pointer("/nope"))
    with pytest.raises(ValueError, match="must start with '/'"):
        parse_pointer("a/b")


@pytest.mark.parametrize(
    ("channel", "file", "billable", "user", "key"),
    [
        ("slack", "slack-message.json", True, "U2147483697", "Ev0PV52K21"),
        ("slack", "slack-url-verification.json", False, "", ""),
        (
            "msteams",
            "msteams-message.json",
            True,
            "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB39ATiQWA85gQtHieVkKilBZ9XHoq9j7Zaqt7CZ-NJWi7me2kHTL3Bw",
            "1485983408511",
        ),
        ("msteams", "msteams-typing.json", False, "", ""),
        (
            "whatsapp",
            "whatsapp-message.json",
            True,
            "16505551234",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        ),
        ("whatsapp", "whatsapp-status.json", False, "", ""),
    ],
)
def test_builtin_rules_on_samples(
    channel: str, file: str, billable: bool, user: str, key: str
) -> None:
    rule = Channels({}).get(channel)
    assert rule.needs_body
    msg = rule.inspect({}, sample(file), authenticated=True)
    assert msg.billable is billable
    if billable:
        assert (msg.user, msg.key) == (user, key)
    # An unverified body never buys a free pass.
    assert rule.inspect({}, sample(file), authenticated=False).billable


def test_wildcard_pointers() -> None:
    doc = {"a": [{"b": 1}, {"c": 2}, {"b": [3]}], "o": {"x": {"b": 4}, "*": {"b": 5}}}
    assert values(doc, parse_pointer("/a/*/b")) == [1, [3]]
    assert values(doc, parse_pointer("/a/*/b/*")) == [3]
    assert values(doc, parse_pointer("/o/*/b")) == [4, 5]  # an object's values too
    assert values(doc, parse_pointer("/a/1/c")) == [2]
    assert values(doc, parse_pointer("/a/*/z")) == values(doc, parse_pointer("/nope")) == []


def test_whatsapp_messages_anywhere_one_at_a_time() -> None:
    """A WhatsApp delivery may batch entries and changes: the message is found wherever
    it is, and more than one message is ``several`` (refused, never charged once)."""
    rule = Channels({}).get("whatsapp")
    message = orjson.loads(sample("whatsapp-message.json"))
    status = orjson.loads(sample("whatsapp-status.json"))
    m = message["entry"][0]["changes"][0]["value"]["messages"][0]
    later = {"object": "whatsapp_business_account", "entry": status["entry"] + message["entry"]}
    msg = rule.inspect({}, orjson.dumps(later), authenticated=True)
    assert (msg.billable, msg.several, msg.user, msg.key) == (True, False, m["from"], m["id"])
    two = orjson.loads(sample("whatsapp-message.json"))
    two["entry"][0]["changes"][0]["value"]["messages"].append({**m, "from": "4477", "id": "w2"})
    for signed in (True, False):
        msg = rule.inspect({"X-Channel-User-Id": "h"}, orjson.dumps(two), authenticated=signed)
        assert (msg.billable, msg.several) == (True, True)
    receipts = {"object": "whatsapp_business_account", "entry": status["entry"] * 2}
    assert not rule.inspect({}, orjson.dumps(receipts), authenticated=True).billable


def test_headers_win_and_request_id_is_the_last_resort() -> None:
    rule = Channels({}).get("slack")
    body = sample("slack-message.json")
    msg = rule.inspect(
        {"X-Channel-User-Id": "hdr", "Idempotency-Key": "k"}, body, authenticated=False
    )
    assert (msg.user, msg.key) == ("hdr", "k")
    # A signed body's own user and key win over headers nobody signed.
    msg = rule.inspect(
        {"X-Channel-User-Id": "hdr", "Idempotency-Key": "k"}, body, authenticated=True
    )
    assert (msg.user, msg.key) == ("U2147483697", "Ev0PV52K21")
    msg = rule.inspect({"X-Request-Id": "rid"}, body, authenticated=True)
    assert msg.key == "Ev0PV52K21"
    assert Channels({}).get("web").label == "web"  # built in, header-only
    other = Channels({}).get("sms")
    assert not other.needs_body
    assert other.label == "other"
    assert other.inspect({"X-Request-Id": "rid"}, None, authenticated=False).key == "rid"


def test_configured_channels_and_overrides() -> None:
    chans = Channels(
        {
            "voice": ChannelRule(user_pointer="/caller", skip_if_equals={"/kind": ["ping"]}),
            "slack": ChannelRule(delivery_url="http://127.0.0.1:9/slack"),
        }
    )
    voice = chans.get("voice")
    assert voice.label == "voice"
    assert voice.inspect({}, b'{"caller": 42}', authenticated=True).user == "42"
    assert not voice.inspect({}, b'{"kind": "ping"}', authenticated=True).billable
    assert voice.inspect({}, b'{"kind": "ping"}', authenticated=False).billable
    assert voice.inspect({}, b"not json", authenticated=True).billable
    slack = chans.get("slack")  # only delivery_url overridden; built-in pointers stay
    assert slack.delivery_url == "http://127.0.0.1:9/slack"
    msg = slack.inspect({}, sample("slack-message.json"), authenticated=True)
    assert msg.user == "U2147483697"


# ----------------------------------------------------------- through the gateway


def test_only_slacks_url_verification_carries_a_challenge() -> None:
    """What a skipped callback's answer may echo (gateway/unbilled.py): Slack's own
    challenge, 1-256 printable characters; every other skipped callback nothing."""
    ch = Channels({"hooks": ChannelRule(skip_if_equals={"/type": ["url_verification"]})})

    def challenge(channel: str, doc: object) -> str | None:
        msg = ch.get(channel).inspect({}, orjson.dumps(doc), authenticated=True)
        assert not msg.billable
        return msg.challenge

    sample_doc = orjson.loads(sample("slack-url-verification.json"))
    assert challenge("slack", sample_doc) == sample_doc["challenge"]
    verify = {"type": "url_verification", "challenge": "c1"}
    assert challenge("slack", verify) == "c1"
    assert challenge("hooks", verify) is None  # a configured channel: an empty answer
    assert challenge("slack", {"type": "app_rate_limited", "challenge": "c1"}) is None
    for odd in ("", "x" * 257, "a\nb", 7, ["c1"], None):
        assert challenge("slack", {"type": "url_verification", "challenge": odd}) is None
