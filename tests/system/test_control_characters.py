"""Control characters in the admin API's text are 422 on every store.

A NUL (which PostgreSQL cannot hold in text) in a list cursor, an upgrade request's
message, a decline's reason or a webhook secret was 503 ``store_unavailable`` ("retry
later") on PostgreSQL and stored as given on SQLite. Real admin server, real Redis,
SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from tests.support.adminkit import Admin
from tests.support.settings import OPERATOR_TOKEN


def _cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def _refused(status: int, body: Any, field: str) -> None:
    assert (status, body.get("code"), body.get("field")) == (422, "invalid_input", field), body


async def test_a_cursor_holding_a_control_character_is_422(any_admin: Admin) -> None:
    a = any_admin
    tok, ws = await a.owner_workspace()
    app = await a.new_app(tok, ws)
    for text in ("\x00", "a\x00", "\x1b[2J", "\x7f"):
        for path, who in (
            (f"/v1/tokens?cursor={_cursor('tokens', 1, text)}", tok),
            (f"/v1/invitations?cursor={_cursor('invitations', 1, text)}", tok),
            (f"/v1/workspaces?cursor={_cursor('workspaces', 1, text)}", tok),
            (f"/v1/workspaces/{ws}/members?cursor={_cursor('members', text)}", tok),
            (f"/v1/apps/{app}/collaborators?cursor={_cursor('collaborators', text)}", tok),
            (f"/v1/workspaces/{ws}/apps?cursor={_cursor('apps', 1, text)}", tok),
            (
                f"/v1/workspaces/{ws}/upgrade-requests?cursor="
                f"{_cursor('upgrade-requests', 1, text)}",
                tok,
            ),
            (f"/v1/workspaces/{ws}/sessions?cursor={_cursor('sessions', 1, text)}", tok),
            (
                f"/v1/upgrade-requests?cursor={_cursor('open-upgrade-requests', 1, text)}",
                OPERATOR_TOKEN,
            ),
        ):
            status, body = await a.api("GET", path, who)
            _refused(status, body, "cursor")
    # A cursor the gateway made still turns the page.
    for i in range(3):
        await a.ok("POST", "/v1/tokens", tok, {"name": f"t {i}"})
    first = await a.ok("GET", "/v1/tokens?limit=2", tok)
    rest = await a.ok("GET", f"/v1/tokens?limit=2&cursor={first['next_cursor']}", tok)
    assert len(first["tokens"]) + len(rest["tokens"]) == 4


async def test_free_text_with_a_control_character_is_422(any_admin: Admin) -> None:
    a = any_admin
    tok, ws = await a.owner_workspace()
    path = f"/v1/workspaces/{ws}/upgrade-requests"
    for message in ("hi\x00there", "\x1b]8;;http://x\x07", "a\rb"):
        body = {"products": ["search"], "message": message}
        _refused(*await a.api("POST", path, tok, body), "message")
    hook = f"/v1/workspaces/{ws}/webhook"
    for secret in ("s" * 20 + "\x00", "s" * 20 + "\n"):
        body = {"url": "https://example.com/hook", "secret": secret}
        _refused(*await a.api("PUT", hook, tok, body), "secret")
    # Newlines and tabs stay allowed in a message and a reason.
    made = await a.ok("POST", path, tok, {"products": ["search"], "message": "line\n\tnext"})
    assert made["message"] == "line\n\tnext"
    decline = f"/v1/upgrade-requests/{made['id']}/decline"
    for reason in ("no\x00", "no\x1b[31m"):
        _refused(*await a.api("POST", decline, OPERATOR_TOKEN, {"reason": reason}), "reason")
    done = await a.ok("POST", decline, OPERATOR_TOKEN, {"reason": "not yet:\r\n\tsee docs"})
    assert (done["status"], done["reason"]) == ("declined", "not yet:\n\tsee docs")


async def test_crlf_line_ends_in_free_text_are_newlines(any_admin: Admin) -> None:
    """A browser's text area sends CRLF: taken as newlines, the same text on every
    store; a carriage return alone is still refused (above)."""
    a = any_admin
    tok, ws = await a.owner_workspace()
    path = f"/v1/workspaces/{ws}/upgrade-requests"
    body = {"products": ["search"], "message": "Hello,\r\nwe need search.\r\n"}
    made = await a.ok("POST", path, tok, body)
    assert made["message"] == "Hello,\nwe need search.\n"
    again = await a.api("POST", path, tok, body)  # the same request, as it was stored
    assert again[1]["id"] == made["id"], again
    listed = await a.ok("GET", path, tok)
    assert [r["message"] for r in listed["requests"]] == ["Hello,\nwe need search.\n"]


async def test_the_length_of_free_text_counts_a_crlf_as_one_newline(any_admin: Admin) -> None:
    """2000 characters once CRLF became newlines: a text area's 1401-character reason
    (700 CRLF) was refused as longer than 2000 (counted before the conversion); one of
    2001 characters after it is still refused."""
    a = any_admin
    tok, ws = await a.owner_workspace()
    path = f"/v1/workspaces/{ws}/upgrade-requests"
    long = "a\r\n" * 700 + "a"  # 2101 sent, 1401 kept
    made = await a.ok("POST", path, tok, {"products": ["search"], "message": long})
    assert made["message"] == "a\n" * 700 + "a"
    decline = f"/v1/upgrade-requests/{made['id']}/decline"
    done = await a.ok("POST", decline, OPERATOR_TOKEN, {"reason": long})
    assert done["reason"] == "a\n" * 700 + "a"
    too_long = "b" + "\r\n" * 1000 + "b" * 1000  # 2001 kept
    made = await a.ok("POST", path, tok, {"products": ["agent"]})
    decline = f"/v1/upgrade-requests/{made['id']}/decline"
    _refused(*await a.api("POST", decline, OPERATOR_TOKEN, {"reason": too_long}), "reason")
    body = {"products": ["automation"], "message": too_long}
    _refused(*await a.api("POST", path, tok, body), "message")


async def test_free_text_with_a_bidi_control_is_422(any_admin: Admin) -> None:
    """An upgrade request's message (read by operators in their queue) and a decline's
    reason (read by the owner) refuse the bidi embeddings, overrides and isolates a name
    refuses, which make text display in another order than it is stored; nothing is
    recorded."""
    a = any_admin
    tok, ws = await a.owner_workspace()
    path = f"/v1/workspaces/{ws}/upgrade-requests"
    bidi = [chr(cp) for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
    for ch in bidi:
        body = {"products": ["search"], "message": f"grant {ch}tsil-on"}
        _refused(*await a.api("POST", path, tok, body), "message")
    assert (await a.ok("GET", path, tok))["requests"] == []
    made = await a.ok("POST", path, tok, {"products": ["search"], "message": "please"})
    decline = f"/v1/upgrade-requests/{made['id']}/decline"
    for ch in bidi:
        body = {"reason": f"declined {ch}devorppa"}
        _refused(*await a.api("POST", decline, OPERATOR_TOKEN, body), "reason")
    [still] = (await a.ok("GET", path, tok))["requests"]
    assert still["status"] == "open", still
