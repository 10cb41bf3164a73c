"""Which ``Via`` entries are this deployment's (gateway/via.py): the received-by, whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import via


@pytest.fixture(autouse=True)
def _default_name() -> Iterator[None]:
    yield
    via.name_via(via.DEFAULT_NAME)


@pytest.mark.parametrize(
    ("lines", "by"),
    [
        (["1.1 creditgate"], ["creditgate"]),
        (["1.0 fred, 1.1 p.example.net:8080 (Apache/1.1)"], ["fred", "p.example.net:8080"]),
        (["HTTP/2 a", "1.1 b"], ["a", "b"]),
        (["1.0 a (x, 1.1 y (nested, z)), 1.1 c"], ["a", "c"]),
        # An unclosed comment hides nothing (review contract2: it hid the entry the
        # gateway appended, and a self-loop went round 97 times unseen).
        (["1.1 a (unclosed, 1.1 creditgate"], ["a", "creditgate"]),
        ([r"1.0 x (\(), 1.1 creditgate"], ["x", "creditgate"]),  # a quoted "(" nests nothing
        (["creditgate", " , ,"], []),
    ],
)
def test_received_by_reads_the_second_field_of_each_entry(lines: list[str], by: list[str]) -> None:
    assert via.received_by(lines) == by


@pytest.mark.parametrize(
    ("lines", "loop"),
    [
        (["1.1 creditgate"], True),
        (["1.1 CreditGate"], True),
        (["1.0 fred", "1.1 creditgate (x)"], True),
        (["1.1 creditgate-ingress.example.net"], False),
        (["1.0 squid, 1.1 my-creditgateway"], False),
        (["1.0 foo (creditgate)"], False),
        (["creditgate"], False),
        ([], False),
    ],
)
def test_only_the_whole_name_is_a_loop(lines: list[str], loop: bool) -> None:
    assert via.passed_here(lines) is loop


def test_a_deployment_named_otherwise_writes_and_finds_its_own_name() -> None:
    via.name_via("acme-gw")
    assert via.entry == "1.1 acme-gw"
    assert via.passed_here(["1.1 acme-gw"])
    assert not via.passed_here(["1.1 creditgate"])


@pytest.mark.parametrize("client", ["1.0 x (", r"1.0 x (\()", "1.0 x ((a)"])
def test_what_the_gateway_forwards_is_seen_as_a_loop_whatever_the_client_sent(
    client: str,
) -> None:
    """The Via sent on is rebuilt: at the next hop this deployment's entry is an entry."""
    sent = via.forwarded([client])
    assert sent.endswith(", 1.1 creditgate")
    assert "(" not in sent
    assert via.passed_here([sent])
