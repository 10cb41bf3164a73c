"""gateway.counting.outcome_of: every way a traffic request fails is counted as whose
it is, so the operator's error alert (outcome="error") cannot be fired by a tenant's
bot or by anyone sending requests."""

from __future__ import annotations

import pytest

from gateway import problems
from gateway import traffic_rules as rules
from gateway.channel_credentials import auth_unavailable, not_authenticated
from gateway.counting import outcome_of
from gateway.http_rules import body_stalled
from gateway.metrics import OUTCOMES
from meter.errors import InvalidChannelUser, MeteringUnavailable
from meter.refusals import Refusal

BOT = [
    problems.bot_failed(),
    problems.bot_timeout(),
    problems.bot_unavailable(),
    problems.bad_handshake_answer("URL verification"),
    rules.forbidden(),  # the app's upstream address is one the egress policy refuses
    rules.no_upstream("ws01_app1"),
    problems.Problem(502, "upstream_unavailable", "Bot unavailable", "the bot refused"),
]
CLIENT = [
    problems.unknown_app("ws01_nosuch"),  # anyone can name an app that does not exist
    rules.too_large(1024),
    rules.loop_detected(),
    rules.missing_user(),
    body_stalled(30.0),
    problems.Problem(499, "client_gone", "Client closed request"),
    InvalidChannelUser("user", "bad"),
]
GATEWAY = [
    problems.metering_unavailable(),
    MeteringUnavailable("redis: down", ambiguous=False),
    auth_unavailable(),
    RuntimeError("a bug: answered 500 internal_error"),
]


@pytest.mark.parametrize("exc", BOT, ids=lambda e: getattr(e, "code", repr(e)))
def test_the_bots_failures_are_bot_errors(exc: Exception) -> None:
    assert outcome_of(exc) == "bot_error"


@pytest.mark.parametrize("exc", CLIENT, ids=lambda e: getattr(e, "code", repr(e)))
def test_what_a_client_sends_is_a_client_error(exc: Exception) -> None:
    assert outcome_of(exc) == "client_error"


@pytest.mark.parametrize("exc", GATEWAY, ids=lambda e: getattr(e, "code", repr(e)))
def test_only_the_gateways_own_failures_are_errors(exc: Exception) -> None:
    assert outcome_of(exc) == "error"


def test_a_tenants_refusals_are_refused() -> None:
    for r in Refusal:  # metering_unavailable is raised as its 503 problem, not refused
        if r not in (Refusal.UNKNOWN_APP, Refusal.METERING_UNAVAILABLE):
            assert outcome_of(problems.Refused(r.reason)) == "refused", r
    assert outcome_of(not_authenticated("web")) == "refused"


def test_every_outcome_is_declared() -> None:
    seen = {outcome_of(e) for e in BOT + CLIENT + GATEWAY} | {"refused"}
    assert seen | {"admitted", "unmetered"} == set(OUTCOMES)
