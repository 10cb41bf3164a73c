"""The admin API's answer to a store that refuses the data: never 503 "retry later".

A value the store cannot hold (:class:`BadValue`: validation missed a bad input) is 422;
a violated constraint (:class:`Rejected`: this code's own data) is 500; only a store
that failed otherwise is 503.
"""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.admin_api.errors import _answer
from meter.store import BadValue, Rejected, StoreError


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BadValue("postgresql: invalid byte sequence for encoding UTF8: 0x00"), 422,
         "invalid_input"),
        (Rejected("sqlite: CHECK constraint failed: status"), 500, "internal_error"),
        (StoreError("postgresql unreachable"), 503, "store_unavailable"),
    ],
)  # fmt: skip
def test_a_refused_value_is_422_a_violated_constraint_500(
    exc: Exception, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.admin_api.errors"):
        answer = _answer(make_mocked_request("GET", "/v1/tokens"), exc)
    assert answer.status == status
    assert isinstance(answer.body, bytes)
    assert orjson.loads(answer.body)["code"] == code
    assert caplog.records  # each is in the operator's log
