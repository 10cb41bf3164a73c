"""The console's cookie names kept off the traffic routes (gateway.console_cookies)."""

from __future__ import annotations

import pytest

from gateway.console.session import COOKIE, SECURE_COOKIE
from gateway.console_cookies import is_console_name, sets_console_cookie, without_console_cookies

STRIPPED = {
    "a=1; cg_session=s; b=2": "a=1; b=2",
    "cg_session=s": "",
    "__Host-cg_session=s;x=1": "x=1",
    " a=1 ;\tCG_SESSION = s ; ; b=2;": "a=1; b=2",
    "cg_session=s; cg_session=t; cg_session": "",
    'a="q; cg_session=s; b=r"': 'a="q; b=r"',
    "__Secure-__host-Cg_Session=s; k=v": "k=v",
    "a=1; b=2": "a=1; b=2",  # untouched, spacing and all
    "a=1;b=2": "a=1;b=2",
    "cg_sessionx=1; xcg_session=2; y=cg_session": "cg_sessionx=1; xcg_session=2; y=cg_session",
}


@pytest.mark.parametrize("value", STRIPPED)
def test_the_console_cookie_is_cut_out(value: str) -> None:
    assert without_console_cookies(value) == STRIPPED[value]


def test_the_console_names_are_its_own() -> None:
    assert is_console_name(COOKIE)
    assert is_console_name(SECURE_COOKIE)
    assert not is_console_name("cg_session2")
    assert not is_console_name("__Host-")


@pytest.mark.parametrize(
    ("value", "dropped"),
    [
        ("cg_session=x; Path=/", True),
        ("=CG_SESSION=x", True),
        ("a=1, cg_session=x", True),
        ("__Secure-cg_session=x; Secure", True),
        ("a=1; Path=/; HttpOnly", False),
        ("cgsession=1", False),
    ],
)
def test_a_set_cookie_naming_the_console_cookie_is_dropped(value: str, dropped: bool) -> None:
    assert sets_console_cookie(value) is dropped
