"""What the proxy drops and adds on the way through (gateway/forwarding.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway import forwarding
from gateway.forwarding import (
    InvalidTail,
    downstream_headers,
    forwarded_headers,
    target_url,
)


def test_request_headers_lose_every_hop_by_hop_header_and_what_connection_lists() -> None:
    src: CIMultiDict[str] = CIMultiDict(
        [
            ("Host", "gw.example"),
            ("Connection", "keep-alive, X-Listed-One"),
            ("connection", " x-listed-TWO ,,"),  # a second Connection header counts too
            ("X-Listed-One", "secret"),
            ("X-LISTED-two", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic eA=="),
            ("pRoXy-Anything", "1"),
            ("X-Keep", "a"),
            ("x-keep", "b"),
            ("Content-Type", "application/json"),
        ]
    )
    out, rid = forwarded_headers(src, "127.0.0.9", "http")
    assert out.getall("X-Keep") == ["a", "b"]  # repeated end-to-end headers keep their order
    assert out["Content-Type"] == "application/json"
    assert out["X-Forwarded-For"] == "127.0.0.9"
    assert out["X-Forwarded-Host"] == "gw.example"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["Via"] == "1.1 creditgate"
    assert out["X-Request-Id"] == rid
    gone = {k.lower() for k in out} & {
        "host", "connection", "x-listed-one", "x-listed-two", "keep-alive", "te", "trailer",
        "transfer-encoding", "upgrade", "proxy-authorization", "proxy-anything",
    }  # fmt: skip
    assert gone == set()


@pytest.mark.parametrize(
    ("peer", "node"), [("127.0.0.9", "127.0.0.9"), ("::1", '"[::1]"'), ("", "unknown")]
)
def test_a_client_address_claim_ends_with_the_peer(peer: str, node: str) -> None:
    src: CIMultiDict[str] = CIMultiDict(
        [("Forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.6"), ("X-Real-IP", "7.7.7.7")]
    )
    out, _ = forwarded_headers(src, peer, "http")
    assert out.getall("Forwarded") == [f"for=6.6.6.6, for={node}"]
    assert out.getall("X-Real-IP") == [peer]
    out, _ = forwarded_headers(CIMultiDict(), peer, "http")
    assert "Forwarded" not in out  # nothing claimed, none added
    assert "X-Real-IP" not in out


def test_extra_drops_are_case_insensitive() -> None:
    src: CIMultiDict[str] = CIMultiDict([("sec-websocket-key", "k"), ("X-A", "1")])
    out, _ = forwarded_headers(src, "127.0.0.1", "http", drop=("Sec-WebSocket-Key",))
    assert "Sec-WebSocket-Key" not in out
    assert out["X-A"] == "1"


def test_response_headers_lose_hop_by_hop_and_a_length_beside_chunked() -> None:
    src: CIMultiDict[str] = CIMultiDict(
        [
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "12"),
            ("Connection", "close, X-Private"),
            ("X-Private", "1"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    out = downstream_headers(src)
    assert list(out.items()) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_a_tail_without_dots_or_escapes_is_kept() -> None:
    url = target_url("http://127.0.0.1:9/bot", "/hooks/web/a1/x/y?q=1", "/hooks/web/a1", "/x/y")
    assert str(url) == "http://127.0.0.1:9/bot/x/y?q=1"


@pytest.mark.parametrize(
    ("base", "raw", "tail", "want"),
    [
        ("http://b/h?code=k", "/hooks/web/a1/&code=x", "/&code=x", "http://b/h/&code=x?code=k"),
        ("http://b/h?code=k", "/hooks/web/a1/x?q=1", "/x", "http://b/h/x?code=k&q=1"),
        ("http://b/h/?code=k", "/hooks/web/a1?q=1", "", "http://b/h/?code=k&q=1"),
        ("http://b/h?code=k#f", "/hooks/web/a1", "", "http://b/h?code=k"),
        ("http://b/h#f", "/hooks/web/a1/x", "/x", "http://b/h/x"),
    ],
)
def test_the_upstream_urls_own_query_stays_a_query(
    base: str, raw: str, tail: str, want: str
) -> None:
    # The tail goes on the upstream URL's path, never into its query (where a client's
    # "/&code=x" would have become a parameter of the tenant's own).
    assert str(target_url(base, raw, "/hooks/web/a1", tail)) == want


@pytest.mark.parametrize(
    "tail",
    ["/x/../y", "/x/%2e%2E/y", "/x%2F..%2Fy", "/./y", "/x/..", "/..;/y", "/x/.;a=1/y", "/.%2e%3B"],
)
def test_dot_segments_are_refused(tail: str) -> None:
    with pytest.raises(InvalidTail):
        target_url("http://127.0.0.1:9/bot", "/hooks/web/a1" + tail, "/hooks/web/a1", tail)


def test_the_app_header_is_the_gateways_own() -> None:
    src: CIMultiDict[str] = CIMultiDict([("X-Creditgate-App", "evil"), ("x-creditgate-app", "x")])
    out, _ = forwarded_headers(src, "127.0.0.1", "http", app="ws_a1")
    assert out.getall("X-Creditgate-App") == ["ws_a1"]
    out, _ = forwarded_headers(src, "127.0.0.1", "http")  # no app: no client's either
    assert "X-Creditgate-App" not in out


def test_target_urls_are_parsed_once_and_the_cache_stays_bounded() -> None:
    first = target_url("http://127.0.0.1:9/bot", "/hooks/web/a1/x?q=1", "/hooks/web/a1", "/x")
    again = target_url("http://127.0.0.1:9/bot", "/hooks/web/a1/x?q=1", "/hooks/web/a1", "/x")
    assert again is first
    assert str(again) == "http://127.0.0.1:9/bot/x?q=1"
    # A client varying its query: the cache never holds more than its bound.
    for n in range(1500):
        url = target_url("http://127.0.0.1:9/bot", f"/hooks/web/a1?n={n}", "/hooks/web/a1", "")
        assert str(url) == f"http://127.0.0.1:9/bot?n={n}"
    info = forwarding._url_of.cache_info()
    assert info.currsize <= info.maxsize == 512
    # A long one is parsed, never kept.
    long = "q=" + "x" * forwarding.URL_CACHE_MAX_LEN
    misses = info.misses
    url = target_url("http://127.0.0.1:9/bot", f"/hooks/web/a1?{long}", "/hooks/web/a1", "")
    assert url.raw_query_string == long
    assert forwarding._url_of.cache_info().misses == misses
