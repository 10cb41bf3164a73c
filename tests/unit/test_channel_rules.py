"""Channel rules: user and idempotency key from headers or JSON pointers, billable or not,
on real channel payload samples (``tests/data/channels``); no server."""

from __future__ import annotations

import orjson
import pytest

from config.fields import ChannelRule
from gateway.channels import MAX_BATCH, Channels, Message, parse_pointer, resolve, values
from gateway.json_pointer import FOLD_COST, MAX_WALK, TooComplex
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


def test_whatsapp_messages_anywhere_each_its_own() -> None:
    """A WhatsApp delivery may batch entries and changes: the message is found wherever
    it is, and more than one message is a ``batch``, each message with its own user and
    key, from the body alone (never charged once, never under a header's user or key)."""
    rule = Channels({}).get("whatsapp")
    message = orjson.loads(sample("whatsapp-message.json"))
    status = orjson.loads(sample("whatsapp-status.json"))
    m = message["entry"][0]["changes"][0]["value"]["messages"][0]
    later = {"object": "whatsapp_business_account", "entry": status["entry"] + message["entry"]}
    msg = rule.inspect({}, orjson.dumps(later), authenticated=True)
    assert (msg.billable, msg.several, msg.user, msg.key) == (True, "", m["from"], m["id"])
    assert msg.batch == ()
    two = orjson.loads(sample("whatsapp-message.json"))
    two["entry"][0]["changes"][0]["value"]["messages"].append({**m, "from": "4477", "id": "w2"})
    head = {"X-Channel-User-Id": "h", "Idempotency-Key": "k"}
    for signed in (True, False):
        msg = rule.inspect(head, orjson.dumps(two), authenticated=signed)
        assert (msg.billable, msg.several) == (True, "")
        assert msg.batch == ((m["from"], m["id"]), ("4477", "w2"))
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


def test_folded_pointers_take_every_spelling_within_a_bounded_walk() -> None:
    doc = {"Entry": [{"messages": [1]}, {"MESSAGES": [2], "meſſages": [3]}], "entry": [{}]}
    assert values(doc, parse_pointer("/entry/*/messages/*")) == []
    assert values(doc, parse_pointer("/entry/*/messages/*"), fold=True) == [1, 2, 3]
    assert values({"a": 1, "A": 2}, parse_pointer("/a"), fold=True) == [1, 2]
    # As Go's and .NET's readers fold: long s, Kelvin sign, dotless and dotted I.
    odd = {"ſ": 1, "\u212a": 2, "ı": 3, "İ": 4, "σ": 5}
    assert [values(odd, (t,), fold=True) for t in ("s", "k", "i")] == [[1], [2], [3, 4]]
    wide = {"entry": [[]] * (MAX_WALK + 1)}
    with pytest.raises(TooComplex):
        values(wide, parse_pointer("/entry/*/x"))
    with pytest.raises(TooComplex):
        values({str(i): i for i in range(MAX_WALK + 1)}, parse_pointer("/a"), fold=True)
    assert values({str(i): i for i in range(MAX_WALK + 1)}, parse_pointer("/a")) == []
    # A key beyond ASCII, folded character by character, costs more.
    many = {f"é{i:04d}": i for i in range(MAX_WALK // (FOLD_COST + 1) + 1)}
    with pytest.raises(TooComplex):
        values(many, parse_pointer("/entry"), fold=True)
    ascii_keys = {f"a{i:04d}": i for i in range(len(many))}
    assert values(ascii_keys, parse_pointer("/entry"), fold=True) == []


def test_a_megabyte_of_whatsapp_receipts_is_walked() -> None:
    """~3,300 status entries (1 MB, the body limit) are read, not refused as too complex
    (Meta would retry them for ever); a message among them is found."""
    whatsapp = Channels({}).get("whatsapp")
    doc = orjson.loads(sample("whatsapp-status.json"))
    doc["entry"] = doc["entry"] * 3300
    msg = whatsapp.inspect({}, orjson.dumps(doc), authenticated=True)
    assert (msg.billable, msg.unreadable) == (False, "")
    doc["entry"] = [*doc["entry"], orjson.loads(sample("whatsapp-message.json"))["entry"][0]]
    msg = whatsapp.inspect({}, orjson.dumps(doc), authenticated=True)
    assert (msg.billable, msg.several, msg.unreadable) == (True, "", "")


def test_rules_err_towards_billing_across_spellings() -> None:
    """Billing and counting see every spelling of a key; skipping needs the exact key,
    and every spelling of it a value to skip."""
    whatsapp = Channels({}).get("whatsapp")
    doc = orjson.loads(sample("whatsapp-message.json"))
    value = doc["entry"][0]["changes"][0]["value"]
    value["Messages"] = value.pop("messages")
    msg = whatsapp.inspect({}, orjson.dumps(doc), authenticated=True)
    assert (msg.billable, msg.several, msg.user) == (True, "", "16505551234")
    value["messages"] = [{"type": "text"}]  # no from, no id: still a second message
    msg = whatsapp.inspect({}, orjson.dumps(doc), authenticated=True)
    assert msg.batch == (("16505551234", value["Messages"][0]["id"]), ("", ""))
    for body in (b"\xef\xbb\xbf" + sample("whatsapp-message.json"), b"{"):
        msg = whatsapp.inspect({}, body, authenticated=True)
        assert msg.billable
        assert msg.unreadable
    teams = Channels({}).get("msteams")
    typing = orjson.loads(sample("msteams-typing.json"))
    assert not teams.inspect({}, orjson.dumps(typing), authenticated=True).billable
    assert teams.inspect(
        {}, orjson.dumps({**typing, "Type": "message"}), authenticated=True
    ).billable
    del typing["type"]
    assert teams.inspect(
        {}, orjson.dumps({**typing, "Type": "typing"}), authenticated=True
    ).billable


def test_a_skip_holds_only_where_every_spelling_of_its_path_holds_it() -> None:
    """``{"event": {.., "bot_id": ..}, "Event": {a user's message}}`` is the bot's echo to
    a reader of exact keys and a user's message to Go's or .NET's (the last spelling of
    ``event`` wins): it is billed, not skipped. Where every spelling holds the field, or
    the path has one spelling, the skip stands."""
    slack = Channels({}).get("slack")
    doc = orjson.loads(sample("slack-message.json"))
    event = doc["event"]
    echo = {**event, "bot_id": "B0BOT"}

    def billable(d: object) -> bool:
        return slack.inspect({}, orjson.dumps(d), authenticated=True).billable

    assert not billable({**doc, "event": echo})
    assert billable({**doc, "event": echo, "Event": {**event, "text": "a free question"}})
    assert billable({**doc, "Event": event, "event": echo})  # in either order
    assert billable({**doc, "event": echo, "EVENT": "not an object"})
    assert not billable({**doc, "event": echo, "Event": {**event, "BOT_ID": "B0BOT"}})
    # skip_if_equals alike, on a path of two keys.
    rules = Channels({"c": ChannelRule(skip_if_equals={"/event/type": ["typing"]})}).get("c")
    typing = {"event": {"type": "typing"}}

    def skipped(d: object) -> bool:
        return not rules.inspect({}, orjson.dumps(d), authenticated=True).billable

    assert skipped(typing)
    assert not skipped({**typing, "Event": {"text": "hi"}})
    assert skipped({**typing, "Event": {"TYPE": "typing"}})


def test_whatsapp_batches_that_cannot_be_metered_message_by_message() -> None:
    """Each copy of a keyed message is a delivery of its key; two different messages under
    one user's key, a message naming two users (``from`` and ``From``), or more than
    MAX_BATCH messages are ``several`` (422), as is several of anything on a channel
    without batches."""
    rule = Channels({}).get("whatsapp")
    doc = orjson.loads(sample("whatsapp-message.json"))
    m = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    value = doc["entry"][0]["changes"][0]["value"]

    def inspect(*messages: dict[str, object]) -> Message:
        value["messages"] = list(messages)
        return rule.inspect({}, orjson.dumps(doc), authenticated=True)

    assert inspect(m, m, {**m, "id": "w2"}).batch == (
        (m["from"], m["id"]),
        (m["from"], m["id"]),  # a copy: another delivery of its key, counted
        (m["from"], "w2"),
    )
    assert inspect({**m, "id": 7}, {**m, "id": "7"}).several  # 7 and "7": one key
    assert inspect(m, {**m, "text": {"body": "free?"}}).several
    assert inspect(m, {**m, "From": "4477"}).several
    assert inspect(m, {**m, "id": "w2", "ID": "w3"}).several
    assert inspect({**m, "from": "1"}, {**m, "from": "2"}).batch == (("1", m["id"]), ("2", m["id"]))
    assert inspect({"x": 1}, {"x": 1}).batch == (("", ""), ("", ""))  # keyless: each charged
    many = [{**m, "id": f"w{i}"} for i in range(MAX_BATCH)]
    assert len(inspect(*many).batch) == MAX_BATCH
    assert inspect(*many, {**m, "id": "one more"}).several
    value["messages"] = [m]
    doc["entry"][0]["changes"][0]["value"] = {**value, "Messages": [{**m, "id": "w2"}]}
    assert rule.inspect({}, orjson.dumps(doc), authenticated=True).batch == (
        (m["from"], m["id"]),
        (m["from"], "w2"),
    )
    slack = Channels({}).get("slack")
    two = orjson.loads(sample("slack-message.json"))
    two["Event"] = {**two["event"], "user": "U2"}
    msg = slack.inspect({}, orjson.dumps(two), authenticated=True)
    assert (bool(msg.several), msg.batch) == (True, ())


def test_a_key_named_twice_in_an_object_is_unreadable_where_the_body_is_read() -> None:
    """``"value":{"messages":[..]},"value":{"statuses":[..]}``: orjson keeps the last
    ``value`` (a status: not billed), Go's encoding/json merges both (the bot reads the
    messages). On every channel that reads the body, signed or not (WhatsApp's ``value``,
    Slack's ``event``, Teams' ``type``), such a body is ``unreadable`` (422), never
    skipped nor billed as orjson reads it; the web channel never parses a body."""
    statuses = b'{"messaging_product":"whatsapp","statuses":[{"id":"s","status":"read"}]}'
    message = orjson.dumps(orjson.loads(sample("whatsapp-message.json"))["entry"][0])
    value = orjson.dumps(orjson.loads(message)["changes"][0]["value"])
    hidden = b'{"entry":[{"changes":[{"field":"messages","value":%s,"value":%s}]}]}' % (
        value,
        statuses,
    )
    slack = orjson.loads(sample("slack-message.json"))
    echo = orjson.dumps({**slack["event"], "bot_id": "B0BOT"})
    slack_twice = orjson.dumps(slack)[:-1] + b',"event":' + echo + b"}"
    typing = sample("msteams-typing.json").rstrip()
    teams_twice = orjson.dumps(orjson.loads(sample("msteams-message.json")))[:-1] + (
        b',"type":"typing"}'
    )
    for channel, body in (("whatsapp", hidden), ("slack", slack_twice), ("msteams", teams_twice)):
        rule = Channels({}).get(channel)
        for authenticated in (True, False):
            msg = rule.inspect({}, body, authenticated=authenticated)
            assert msg.billable, channel
            assert msg.unreadable == "an object names one key twice", channel
    # The same bodies with each key once are read as before.
    assert not Channels({}).get("msteams").inspect({}, typing, authenticated=True).billable
    deep = b'{"id":"1","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    msg = Channels({}).get("msteams").inspect({}, deep, authenticated=True)
    assert (msg.billable, msg.unreadable) == (True, "the body nests too deeply")
    web = Channels({}).get("web")
    assert not web.needs_body
    assert web.inspect({"X-Channel-User-Id": "u"}, None, authenticated=False).unreadable == ""


def test_copies_of_a_keyed_message_are_compared_as_json() -> None:
    """Copies under one key are one message only if their JSON is the same: ``true`` is
    not ``1`` nor ``1.0`` (Python's ``==`` made them one message, one charge), and the
    comparison never recurses (nested arrays made Python's ``!=`` raise RecursionError,
    answered 500); too deep to compare is ``several`` (422). Key order does not matter."""
    from gateway.channel_batches import split

    at = parse_pointer("/m/*")
    user_at, key_at = parse_pointer("/m/*/from"), parse_pointer("/m/*/id")
    m = {"from": "1", "id": "w1"}
    for a, b in ((True, 1), (1, 1.0), (False, 0), ("1", 1)):
        batch, _, why = split([{**m, "x": a}, {**m, "x": b}], at, user_at, key_at)
        assert (batch, why) == ((), "two different messages under one key"), (a, b)
    same = b'{"from":"1","id":"w1","x":1,"y":2}'
    assert split([{**m, "x": 1, "y": 2}, {"y": 2, "x": 1, **m}], at, user_at, key_at) == (
        (("1", "w1"), ("1", "w1")),
        (same, same),
        "",
    )
    deep: list[object] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    batch, _, why = split([{**m, "x": deep}, {**m, "x": deep}], at, user_at, key_at)
    assert batch == ()
    assert "nests too deeply" in why
    # Alone, such a message's redeliveries repeat the whole body (no part of its own).
    assert split([{**m, "x": deep}], at, user_at, key_at) == ((("1", "w1"),), (b"",), "")


def test_a_whatsapp_message_is_its_own_part_alone_or_in_a_batch() -> None:
    """What a keyed message's redeliveries must repeat is the message (its JSON, key order
    aside), the same alone or in any batch: Meta may retry it in another. Not so for an
    unsigned delivery (anyone's envelope around a used message: the whole body), for a
    message without a key (charged at every delivery), nor on other channels."""
    rule = Channels({}).get("whatsapp")
    doc = orjson.loads(sample("whatsapp-message.json"))
    value = doc["entry"][0]["changes"][0]["value"]
    m = {"from": "1", "id": "w1", "text": {"body": "hi"}}
    other = {"from": "2", "id": "w2", "text": {"body": "yo"}}
    part = orjson.dumps(m, option=orjson.OPT_SORT_KEYS)

    def inspect(*messages: dict[str, object], headers: dict[str, str] | None = None) -> Message:
        value["messages"] = list(messages)
        return rule.inspect(headers or {}, orjson.dumps(doc), authenticated=headers is None)

    alone, first, last = inspect(m), inspect(m, other), inspect(other, dict(reversed(m.items())))
    assert (alone.key, alone.batch, alone.parts) == ("w1", (), (part,))
    assert first.parts[0] == last.parts[1] == part
    assert first.parts[1] == last.parts[0] != part
    assert inspect({"from": "1"}, other).parts[0] == b""  # no key: nothing to repeat
    assert inspect({"from": "1"}).parts == ()
    # Unsigned: the whole body is what a redelivery repeats, alone or in a batch.
    unsigned = {"X-Channel-User-Id": "1"}
    assert (inspect(m, headers=unsigned).key, inspect(m, headers=unsigned).parts) == ("w1", ())
    assert inspect(m, other, headers=unsigned).parts == (b"", b"")
    keyed = inspect(m, headers={"Idempotency-Key": "k9", **unsigned})
    assert (keyed.key, keyed.parts) == ("k9", ())
    slack = Channels({}).get("slack")
    assert slack.inspect({}, sample("slack-message.json"), authenticated=True).parts == ()
