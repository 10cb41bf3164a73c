"""A small pure-Python model of one standard workspace's metering rules (docs/design.md §1).

It restates, for a standard (prepaid) workspace, what ``meter/lua/admit.lua``,
``refund.lua`` and ``grant.lua`` decide, written the plain way: no caches, no
write-back, rolling windows as "all buckets ever, count those still in range".
``tests/integration/test_admission_model.py`` runs it side by side with the real scripts.
Times are integer milliseconds; money is integer micro-dollars.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from meter.admission.decision import Decision
from meter.redis_layer import keys

NB = 60  # buckets per rolling window, as in admit.lua
REASON = {
    2: "app_suspended",
    4: "rate_limited",
    6: "credits_exhausted",
    7: "free_credits_expired",
    8: "duplicate_delivery",
}
MAX_DELIVERIES = 5  # settings.idempotency_max_deliveries, the default


def record_id(ch: str, user: str, key: str, token: str) -> str:
    """A channel key belongs to one channel and channel user (as redis_layer.keys.record_id)."""
    return f"k:{ch}\t{user}\t{key}" if key else f"t:{token}"


# The model answers in the product's record, field by field by name (it never decodes a
# reply: Decision.from_reply is what the comparison tests). Template: nothing charged.
NOTHING = Decision(0, 0, 0, 0, 0, 0, 0, "", False, False, "", "", "")


@dataclass
class App:
    product: str
    unit: str  # "session" | "request"
    price: int
    use_free: bool = True
    suspended: bool = False
    pm: int | None = None  # rate-limit overrides
    ph: int | None = None
    app: int = 0  # its app balance
    inactive: bool = False


@dataclass
class Window:
    """Rolling window of NB buckets; counts every bucket whose index is >= cur - NB."""

    win_ms: int
    buckets: Counter[int] = field(default_factory=Counter)

    def _g(self) -> int:
        assert self.win_ms % NB == 0, "keep windows a multiple of 60 ms: integer buckets"
        return self.win_ms // NB

    def count(self, now: int) -> int:
        cur = now // self._g()
        return sum(c for i, c in self.buckets.items() if i >= cur - NB)

    def add(self, now: int) -> None:
        self.buckets[now // self._g()] += 1

    def wait_ms(self, now: int, limit: int) -> int:
        """Time until enough old buckets fall out of the window for one more message."""
        g = self._g()
        cur = now // g
        excess, acc = self.count(now) + 1 - limit, 0
        for i in range(cur - NB, cur + 1):
            acc += self.buckets.get(i, 0)
            if acc >= excess:
                return (i + NB + 1) * g - now
        return g


@dataclass
class Session:
    start: int
    last: int
    blocks: int
    bsid: str
    msgs: int = 0  # messages admitted in the current block (redeliveries excluded)


@dataclass
class Entry:
    """One billing session's entry (lib_sessions.lua), by id: where its block started (the
    bucket refund.lua finds it in) and the messages it counts."""

    start: int
    msgs: int


class Record(NamedTuple):
    """The charge record ``P:i:<app>:<rid>``: redelivery check and what a refund reverses."""

    token: str
    deliveries: int
    units: int
    bsid: str
    free: int
    app: int
    pool: int
    channel: str
    unit: str
    user: str
    redelivered: tuple[str, ...] = ()  # the redeliveries' tokens
    failed: frozenset[str] = frozenset()  # tokens of the deliveries that failed


@dataclass
class Workspace:
    """One standard workspace and its apps, under the given settings."""

    block_ms: int
    idle_ms: int
    low: int  # low-balance threshold
    paid_first: bool
    per_minute: int
    per_hour: int
    minute_ms: int
    hour_ms: int
    notification_price: int
    apps: dict[str, App] = field(default_factory=dict)
    free: int = 0
    free_granted: int = 0
    free_exp: int = 0
    lapsed: int = 0
    pool: int = 0
    is_low: bool = False
    seq: int = 0
    events: list[str] = field(default_factory=list)  # "<type>:<id>"
    grants: set[str] = field(default_factory=set)
    rates: dict[str, tuple[Window, Window]] = field(default_factory=dict)
    sessions: dict[tuple[str, str, str], Session] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)  # by billing-session id
    pending: dict[str, str] = field(default_factory=dict)  # bsid -> opener kept (P:rp)
    uncounted: set[str] = field(default_factory=set)  # tokens un-counted (P:uc)
    records: dict[tuple[str, str], Record] = field(default_factory=dict)
    agg: Counter[str] = field(default_factory=Counter)  # "<app>|<ch>|<product>|<unit>|<metric>"

    def paid_total(self) -> int:
        return self.pool + sum(a.app for a in self.apps.values())

    def _funds(self) -> tuple[int, int, int]:
        return self.free, self.pool, self.paid_total()

    def _event(self, kind: str) -> None:
        self.seq += 1
        self.events.append(f"{kind}:e{self.seq}")

    # -- grant.lua ------------------------------------------------------------------------
    def grant(self, ref: str, kind: str, amount: int, app: str = "", expires: int = 0) -> bool:
        if ref in self.grants:
            return False
        self.grants.add(ref)
        if kind == "free":
            self.free += amount
            self.free_granted += amount
            self.free_exp = max(self.free_exp, expires)
        elif app:
            self.apps[app].app += amount
        else:
            self.pool += amount
        for a in self.apps.values():
            a.inactive = False
        if self.free + self.paid_total() >= self.low:
            self.is_low = False
        return True

    # -- admit.lua: one batch, all at the same instant ------------------------------------
    def admit(self, now: int, msgs: list[tuple[str, str, str, str, str, str]]) -> list[Decision]:
        """``msgs``: (app, channel, user, idempotency key or "", token, kind "m"|"n")."""
        self.seq = max(self.seq, now * 1000 - 1)  # ids (events, sessions) >= now x 1000
        if self.free > 0 and now >= self.free_exp:
            self._event("free_credits.expired")
            self.lapsed, self.free = self.lapsed + self.free, 0
        free0, paid0, before = self.free, self.paid_total(), self._funds()
        out = [self._admit_one(now, *m) for m in msgs]
        if free0 > 0 and self.free == 0:
            self._event("free_credits.exhausted")
        if paid0 > 0 and self.paid_total() <= 0:
            self._event("paid_balance.zero")
        usable = (self.free if now < self.free_exp else 0) + self.paid_total()
        if self._funds() != before and not self.is_low and usable < self.low:
            self.is_low = True  # fires on the first debit that leaves the balance low
            self._event("balance.low")
        return out

    def _admit_one(
        self, now: int, app_id: str, ch: str, user: str, key: str, token: str, kind: str
    ) -> Decision:
        a = self.apps.get(app_id)
        if a is None:
            return NOTHING._replace(code=1)
        unit, price = (
            (a.unit, a.price) if kind == "m" else ("notification", self.notification_price)
        )
        fkey = keys.agg_field(app_id, ch, a.product, unit, "")
        windows = self.rates.setdefault(app_id, (Window(self.minute_ms), Window(self.hour_ms)))
        code, retry = self._gate(now, a, windows)
        rid = record_id(ch, user, key, token)
        rec = self.records.get((app_id, rid))
        if rec is not None:
            gate = (code, retry)
            return self._redelivery(now, a, (app_id, rid), rec, gate, price, fkey, token)
        # Session unit: each started block of a conversation is charged once.
        sk = (app_id, ch, user)
        s = self._session(sk, unit, now)
        need = (now - s.start) // self.block_ms + 1
        charge = need > s.blocks if unit == "session" else True
        f = ap = pp = 0
        if code == 0 and charge:
            code, f, ap, pp = self._charge(now, a, price)
        if code != 0:
            return self._refused(fkey, code, retry)
        units = 1 if charge else 0
        if units:
            a.inactive = False  # a charged unit shows the app can pay again
        for w in windows:
            w.add(now)
        bsid = self._session_step(sk, s, need, charge, now) if unit == "session" else ""
        for metric, v in (("n", units), ("m", 1), ("f", f), ("a", ap), ("p", pp)):
            self.agg[fkey + metric] += v
        if units or key:
            self.records[(app_id, rid)] = Record(token, 1, units, bsid, f, ap, pp, ch, unit, user)
        new_session = charge and unit == "session"
        return NOTHING._replace(
            units=units, free=f, app=ap, pool=pp, bsid=bsid, new_session=new_session,
            channel=ch, user=user,
        )  # fmt: skip

    def _gate(self, now: int, a: App, windows: tuple[Window, Window]) -> tuple[int, int]:
        """Status and rate limits: (code, retry after ms); (0, 0) lets the message on."""
        if a.suspended:
            return 2, 0
        rm, rh = windows
        for w, limit in ((rm, a.pm or self.per_minute), (rh, a.ph or self.per_hour)):
            if w.count(now) + 1 > limit:
                return 4, w.wait_ms(now, limit)
        return 0, 0

    def _usable_free(self, now: int, a: App) -> int:
        return self.free if (a.use_free and now < self.free_exp) else 0

    def _short_of_funds(self, now: int, a: App, price: int) -> int:
        """0 when the app can pay ``price``; else 7 (the free credits lapsed) or 6."""
        if self._usable_free(now, a) + a.app + self.pool < price:
            return 7 if (now >= self.free_exp and self.free_exp > 0) else 6
        return 0

    def _refused(self, fkey: str, code: int, retry: int) -> Decision:
        self.agg[fkey + "r:" + REASON[code]] += 1
        return NOTHING._replace(code=code, retry_after_ms=retry)

    def _redelivery(
        self,
        now: int,
        a: App,
        rkey: tuple[str, str],
        rec: Record,
        gate: tuple[int, int],
        price: int,
        fkey: str,
        token: str,
    ) -> Decision:
        """A redelivery: charged nothing, but it obeys status, credit and rate limits."""
        code, retry = gate
        if code == 0:
            code = self._short_of_funds(now, a, price)
            if code == 0 and rec.deliveries >= MAX_DELIVERIES:
                code = 8
        if code != 0:
            return self._refused(fkey, code, retry)
        for w in self.rates[rkey[0]]:
            w.add(now)
        self.records[rkey] = rec._replace(
            deliveries=rec.deliveries + 1, redelivered=(*rec.redelivered, token)
        )
        return NOTHING._replace(bsid=rec.bsid, duplicate=True)

    def _charge(self, now: int, a: App, price: int) -> tuple[int, int, int, int]:
        """Debit ``price`` in the deduction order: (code, free, app, pool). A refusal for
        want of funds marks the app inactive (once)."""
        code = self._short_of_funds(now, a, price)
        if code:
            if not a.inactive:
                a.inactive = True
                self._event("app.inactive")
            return code, 0, 0, 0
        avail = {"f": self._usable_free(now, a), "a": a.app, "p": self.pool}
        got, left = {}, price
        for pool in "apf" if self.paid_first else "fap":
            got[pool] = min(avail[pool], left)
            left -= got[pool]
        f, ap, pp = got["f"], got["a"], got["p"]
        self.free, a.app, self.pool = self.free - f, a.app - ap, self.pool - pp
        return 0, f, ap, pp

    def _session(self, sk: tuple[str, str, str], unit: str, now: int) -> Session:
        s = self.sessions.get(sk) if unit == "session" else None
        if s is None or now - s.last >= self.idle_ms:
            s = Session(now, now, 0, "")  # a new conversation
        return s

    def _session_step(
        self, sk: tuple[str, str, str], s: Session, need: int, charge: bool, now: int
    ) -> str:
        """A charged message opens the session's next block; any other continues it."""
        if charge:
            self.seq += 1
            s.blocks, s.bsid, s.msgs = need, f"s{self.seq}", 1
            self.entries[s.bsid] = Entry(s.start + (need - 1) * self.block_ms, 1)
        else:
            s.msgs += 1
            self.entries[s.bsid].msgs += 1
        s.last = now
        self.sessions[sk] = s
        return s.bsid

    def _findable(self, now: int, start: int) -> bool:
        """Whether refund.lua's look-up (block buckets from now + 60 s back to
        now - idle - block) reaches the entry of a block that started at ``start``."""
        sb = max(1, self.block_ms // 1000)

        def bucket(ms: int) -> int:
            return ms // 1000 // sb * sb

        return bucket(now - self.idle_ms - self.block_ms) <= bucket(start) <= bucket(now + 60_000)

    def _undo_session(self, app_id: str, rec: Record, e: Entry | None) -> None:
        """A refunded charge's billing session: the conversation's newest goes back to the
        blocks before it; an older block's entry goes."""
        sk = (app_id, rec.channel, rec.user)
        s = self.sessions.get(sk)
        if rec.bsid and s is not None and s.bsid == rec.bsid:
            s.blocks -= 1
            s.msgs -= 1
            if e is not None:
                e.msgs -= 1
            if s.blocks <= 0:
                del self.sessions[sk]
                self.entries.pop(rec.bsid, None)
        elif e is not None:
            del self.entries[rec.bsid]

    # -- refund.lua (through Admitter.refund) ---------------------------------------------
    def refund(self, now: int, app_id: str, d: Decision, rid: str, token: str) -> bool:
        """The failure of one delivery: the charge is refunded when every delivery failed.
        A message admitted inside a paid session un-counts itself from it (once); when
        that leaves only an opener kept because of it, the opener's charge goes back."""
        rec = self.records.get((app_id, rid))
        if not d.duplicate and d.code == 0 and d.units == 0 and rec is None:
            if not d.bsid or not rid.startswith("t:") or token in self.uncounted:
                return False
            self.uncounted.add(token)
            return self._uncount(now, app_id, d.bsid, d.channel)
        if rec is None or (not rec.units and not rec.bsid) or token in rec.failed:
            return False
        if token != rec.token and token not in rec.redelivered:
            return False
        rec = rec._replace(failed=rec.failed | {token})
        self.records[(app_id, rid)] = rec
        if len(rec.failed) < rec.deliveries:
            return False  # another delivery was or may still be served
        if not rec.units:  # a keyed message inside a paid session: un-counted, record gone
            del self.records[(app_id, rid)]
            return self._uncount(now, app_id, rec.bsid, rid[2:].split("\t", 1)[0])
        e = self._entry(now, rec.bsid)
        if rec.bsid and e is None:
            return False  # its session's entry is no longer found: it may have been used
        if e is not None and e.msgs > 1:
            self.pending[rec.bsid] = rid
            return False  # the session it opened was used by other messages: it stands
        return self._give_back(now, app_id, rid, rec, e)

    def _entry(self, now: int, bsid: str) -> Entry | None:
        e = self.entries.get(bsid) if bsid else None
        return e if e is not None and self._findable(now, e.start) else None

    def _uncount(self, now: int, app_id: str, bsid: str, ch: str) -> bool:
        e = self._entry(now, bsid)
        if e is None or e.msgs <= 0:
            return False
        e.msgs -= 1
        a = self.apps[app_id]  # no longer counts in the aggregates' messages either
        self.agg[keys.agg_field(app_id, ch, a.product, a.unit, "m")] -= 1
        orid = self.pending.pop(bsid, None) if e.msgs == 1 else None
        rec = self.records.get((app_id, orid)) if orid is not None else None
        if orid is None or rec is None or not rec.units or rec.bsid != bsid:
            return False
        if len(rec.failed) < rec.deliveries:
            return False
        return self._give_back(now, app_id, orid, rec, e)

    def _give_back(self, now: int, app_id: str, rid: str, rec: Record, e: Entry | None) -> bool:
        del self.records[(app_id, rid)]
        a = self.apps[app_id]
        if now < self.free_exp:
            self.free += rec.free
        elif rec.free:
            self.lapsed += rec.free
            self.seq = max(self.seq, now * 1000 - 1)  # refund.lua's ids too
            self._event("free_credits.expired")
        a.app += rec.app
        self.pool += rec.pool
        self._undo_session(app_id, rec, e)
        fkey = keys.agg_field(app_id, rec.channel, a.product, rec.unit, "")
        for metric, v in (("n", -1), ("m", -1), ("x", 1), ("f", -rec.free)):
            self.agg[fkey + metric] += v
        self.agg[fkey + "a"] -= rec.app
        self.agg[fkey + "p"] -= rec.pool
        self.pending.pop(rec.bsid, None)
        return True
