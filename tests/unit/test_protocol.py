"""The Python <-> Lua protocol of admission, pinned to the scripts' text.

admit.lua's ARGV head and admission layout (meter.admission.wire), its reply
(Decision.from_reply) and its refusal table (meter.refusals), and what the gateway and
the store derive from that one table.
"""

from __future__ import annotations

import asyncio
import re

from gateway.metrics import REFUSALS
from gateway.problems import REFUSAL_STATUS
from meter.admission.decision import Decision
from meter.admission.ticket import ticket
from meter.admission.wire import AdmitArgs, AdmitHead, Pending, resolve
from meter.redis_layer.scripts import lua_source
from meter.refusals import COUNTED, REASONS, Code, Refusal
from meter.store.models import REFUSAL_REASONS

ADMIT = lua_source("admit")


def lua_code(src: str) -> str:
    """The source without its comments."""
    return re.sub(r"--[^\n]*", "", src)


def test_admit_lua_reason_table_is_the_refusal_enum() -> None:
    table = lua_code(ADMIT).split("local REASON = {", 1)[1].split("}", 1)[0]
    lua = {int(k): v for k, v in re.findall(r"\[(\d+)\] = '(\w+)'", table)}
    assert lua == REASONS
    assert {c for c in Code if c is not Code.ADMITTED} == set(REASONS)
    for code, reason in lua.items():
        assert Refusal(reason).code == code


def test_admit_head_is_argv_1_to_15() -> None:
    first = int(re.search(r"^local FIRST = (\d+)$", ADMIT, re.M).group(1))  # type: ignore[union-attr]
    assert len(AdmitHead._fields) == first - 1
    read = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", lua_code(ADMIT))}
    assert read == set(range(1, first))


def test_an_admission_argument_parses_as_admit_lua_reads_it() -> None:
    pattern = re.search(r"^local ARG_RE = '([^']+)'$", ADMIT, re.M).group(1)  # type: ignore[union-attr]
    as_python = pattern.replace("\\t", "\t").replace("%w", "[0-9A-Za-z]")
    args = AdmitArgs("ws01_app1", "slack", "U 1/é", "ev-1", "ab12.3f", "m", "d00d")
    m = re.fullmatch(as_python.strip("^$"), args.encode().decode())
    assert m is not None
    assert m.group(1) == "ws01_app1\tslack\tU 1/é"  # the billing session's field
    assert m.groups()[1:] == tuple(args)
    settled = re.fullmatch(as_python.strip("^$"), args.settled().encode().decode())
    assert settled is not None
    assert settled.group(7) == "M"


def test_decision_from_reply() -> None:
    raw = [0 + 16 * 2, b"s9", b"1,5,6,7,0,0", 4 + 16 * (1 + 8 * 6), b"", b"0,0,0,0,0,1500"]
    raw += [0, b"s9", 0]  # the common message: inside a paid session, nothing charged
    opened = Decision.from_reply(raw, 0, "", "t1", "t:t1")
    assert (opened.code, opened.units, opened.free, opened.app, opened.charged) == (0, 1, 5, 6, 18)
    assert (opened.bsid, opened.new_session, opened.duplicate) == ("s9", True, False)
    refused = Decision.from_reply(raw, 1, "k", "t2", "k:web\tu\tk")
    assert (refused.reason, refused.retry_after_ms, refused.duplicate) == (
        "rate_limited",
        1500,
        True,
    )
    assert refused.shadow_reason == "credits_exhausted"
    inside = Decision.from_reply(raw, 2, "", "t3", "t:t3")
    assert inside[:10] == (0, 0, 0, 0, 0, 0, 0, "s9", False, False)
    assert inside.shadowed == 0
    assert inside.admitted
    assert (inside.key, inside.token, inside.rid) == ("", "t3", "t:t3")
    out = Decision.from_reply([6, b"", 0], 0, "", "t4", "t:t4")  # refused, nothing to say
    assert (out.reason, out.bsid, out.charged, out.retry_after_ms, out.rid) == (
        "credits_exhausted",
        "",
        0,
        0,
        "t:t4",
    )
    assert Decision.from_reply([0, "s1", 0], 0, "", "t5", "r") == inside._replace(
        bsid="s1", token="t5", rid="r"
    )  # a str reply (redis-py decoding) reads the same


async def test_resolve_hands_out_what_from_reply_reads() -> None:
    """wire.resolve decides the common message inline (no frame): the same Decision."""
    raw = [0 + 16 * 2, b"s9", b"1,5,6,7,0,0", 4 + 16 * (1 + 8 * 6), b"", b"0,0,0,0,0,1500"]
    raw += [0, b"s9", 0, 6, b"", 0, 0, "s1", 0]
    loop = asyncio.get_running_loop()
    chunk = [
        Pending(b"", f"k{i}", f"t{i}", f"r{i}", ticket(loop), "web", f"u{i}") for i in range(5)
    ]
    resolve(chunk, raw, 1234)
    for i, p in enumerate(chunk):
        want = Decision.from_reply(raw, i, p.key, p.token, p.rid, "web", p.user, 1234)
        got = p.future.result()
        assert got == want
        assert type(got) is Decision
        assert type(got.bsid) is str


def test_admit_lua_reply_layout_is_three_per_admission() -> None:
    """result() and the short path both append exactly three values."""
    code = lua_code(ADMIT)
    assert "out[no + 1], out[no + 2], out[no + 3] = code + 16 * flags, bsid, amounts" in code
    assert "out[no + 1], out[no + 2], out[no + 3] = 0, bsid, 0" in code
    assert code.count("no = no + 3") == 2
    assert "no = no + 9" not in code


def test_problems_metrics_and_store_derive_from_the_enum() -> None:
    assert {r.reason: (r.status, r.title) for r in Refusal} == REFUSAL_STATUS
    assert REFUSAL_STATUS["rate_limited"] == (429, "Rate limited")
    assert REFUSALS == COUNTED
    # The store's columns, in the order its (append-only) migrations created them.
    assert REFUSAL_REASONS == (
        "unknown_app",
        "credits_exhausted",
        "free_credits_expired",
        "product_not_licensed",
        "app_suspended",
        "rate_limited",
        "usage_limit_reached",
        "metering_unavailable",
        "other",
    )


def test_aggregate_fields_are_tab_joined_and_old_ones_still_fold() -> None:
    """One separator (keys.SEP) in admit.lua's aggregate fields, as in its other
    composite strings; a bucket written before the change still flushes."""
    from meter.redis_layer import keys
    from meter.usage.batches import fold_aggregates

    assert "app_id .. '\\t' .. ch .. '\\t' .. product .. '\\t' .. unit .. '\\t'" in ADMIT
    assert "'|'" not in lua_code(ADMIT)
    assert "'|'" not in lua_code(lua_source("refund"))
    field = keys.agg_field("ws01_a1", "web", "automation", "session", "r:rate_limited")
    assert keys.agg_field_parts(field.encode()) == (
        "ws01_a1", "web", "automation", "session", "r:rate_limited"
    )  # fmt: skip
    old = b"ws01_a1|web|automation|session|n"
    assert keys.agg_field_parts(old)[4] == "n"
    new_m = (field[:-14] + "m").encode()  # the same row, written after the upgrade
    folded = fold_aggregates([field.encode(), b"2", old, b"3", new_m, b"5"])
    assert folded == {
        ("ws01_a1", "web", "automation", "session"): {
            "refused": {"rate_limited": 2}, "units": 3, "messages": 5,
        }
    }  # fmt: skip
