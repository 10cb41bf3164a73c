"""Every Redis key creditgate uses, built in this one module.

All keys of one workspace share the hash tag ``{w}`` (the workspace id), so every
script touching them runs unchanged on Redis Cluster. Scripts receive the
workspace prefix as ``KEYS[1]`` and derive the keys below from it; the suffixes
are mirrored in ``meter/lua/*.lua`` and must change together with this module.

Layout (``P`` = ``cg:{<ws>}``; times in ms unless named ``_s``):

``P:ws``              hash   workspace: ``type`` standard|enterprise; ``free`` free credit
                             left, ``free_granted``, ``free_exp`` (ms), ``lapsed``;
                             ``free_lapsed`` ``<free_exp>:<free_granted>`` of the free
                             credits that lapsed last, ``free_exhausted`` the same
                             ``:<n>``, their n-th running out (admit.lua); ``pool``
                             shared paid funds, ``apps`` sum of its apps' ``app`` balances
                             (docs/glossary.md: free / app / pool); ``u:<product>`` and
                             ``p:<product>`` unit and price, ``np`` notification price;
                             ``l:<product>`` licence ``limit,per_minute,per_hour``; ``seq`` id
                             counter; ``low`` 1 once the low-balance alert fired; ``lowt``
                             the owner's own low-balance threshold (absent: the default);
                             ``own`` the owner's user id (gateway/upstreams.py: the tenant
                             whose connection shares the workspace's traffic takes);
                             ``g:<reference>`` 1 once that grant was applied (in the hash it
                             credits, so a marker cannot be lost without its balance), ``gm``
                             1 once every grant of the ledger has its ``g:`` field.
``P:a:<app>``         hash   app: ``product``, ``use_free`` 0|1, ``suspended`` 0|1, ``app`` paid
                             funds tied to the app, ``pm``/``ph`` rate overrides, ``inactive`` 0|1,
                             ``v`` config version, ``up`` upstream url, ``ch:<channel>`` the
                             channel's verification secret (JSON, Fernet-encrypted).
``P:rm:<app>``        hash   rolling per-minute window: bucket index -> count, ``t`` total,
                             ``o`` oldest and ``n`` newest bucket index.
``P:rh:<app>``        hash   rolling per-hour window, same shape.
``P:i:<app>:<name>``  string charge record of an admitted message (see admit.lua): the
                             redelivery check for its channel key, what a refund reverses;
                             ``name`` is :func:`record_name` of the :func:`record_id` (the
                             key belongs to one app, channel and channel user).
``P:ik:<app>``        string keyed records of the app that took no money, counted for one
                             idempotency window from the first (admit_batch.lua free_ttl):
                             past ``IDEMPOTENCY_MAX_FREE_KEYS_PER_APP`` such a record lives
                             only the refund window.
``P:ikw``             string the same for all of the workspace's apps together
                             (``IDEMPOTENCY_MAX_FREE_KEYS_PER_WORKSPACE``).
``P:rf:<token>``      string a refused attempt (10 s): its refusal is counted once even if the
                             script call is retried after a lost reply.
``P:rsv``             zset   charged messages not yet confirmed as forwarded: ``<app>:<rid>`` ->
                             deadline (ms); the sweeper refunds those past it.
``P:lu:<product>:<period>`` string enterprise usage counted in the billing period.
``P:ag:<bucket_s>``   hash   aggregates of one flush bucket, field :func:`agg_field`
                             ``<app>\\t<channel>\\t<product>\\t<unit>\\t<metric>`` -> integer.
``P:agi``             zset   bucket starts (score = member) of ``P:ag:*`` hashes not yet claimed.
                             Every existing ``P:ag:*`` hash is in it (scripts index a hash as they
                             make it; admit.lua relies on that and indexes only new hashes): a
                             hash left outside it (``P:agi`` deleted by hand) is not flushed
                             until ``creditgate reconcile --apply`` indexes it again.
``P:sr:<bucket_s>``   hash   billing sessions by block start (buckets as wide as the session
                             block): field ``app\tchannel\tuser`` -> ``conv_start,last-conv_start,
                             blocks,bsid,msgs,amount,product``, the live conversation and the record
                             the flusher writes in one entry; a displaced older entry keeps its
                             record under ``app\tchannel\tuser\tbsid``.
``P:sri``             zset   bucket starts of ``P:sr:*`` hashes not yet claimed.
``P:ev``              list   events (JSON) for the ledger and owner notifications.
``P:g:<reference>``   string idempotency marker of a grant as earlier versions kept it (still
                             written beside the ``g:`` field, for replicas of an older version).
``P:apps``            set    app ids of the workspace.
``P:c:<kind>:<bucket_s>:<gen>`` a claimed bucket (``kind`` = ``ag``|``sr``|``ev``) awaiting ack.
``P:lease:<kind>:<bucket_s>`` string the flusher currently holding that claim (PX lease).
``P:cl``              hash   outstanding claims: ``<kind>:<bucket_s>`` -> gen, until acked
                             (how a restarted flusher finds a crashed one's claims).
                             The events list is claimed as bucket ``0``.
``P:clk``             hash   ``<kind>:<bucket_s>`` -> the known gen of that outstanding claim.
``P:acks``            string claims acked (ack.lua): a rebuild whose store read spans one redoes it.
``P:fl``              zset   claim records: ``<kind>:<bucket_s>`` -> gen of that bucket's newest
                             claim (kept for a horizon), ``~`` -> the gen at or below which a
                             bucket without a member counts as known (meter/usage/claims.py).
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "cg"

# Check input with ``fullmatch``: ``$`` also matches before a final newline, so ``match``
# would take "web\n" for "web". (``$``, not ``\Z``: the patterns also go into the
# OpenAPI schema, where ``$`` means the end of the text.)
ID_RE = re.compile(r"^[a-z0-9]{4,32}$")
APP_RE = re.compile(r"^([a-z0-9]{4,32})_([a-z0-9]{4,32})$")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def ws_prefix(ws: str) -> str:
    """``KEYS[1]`` of every workspace script: the prefix carrying the hash tag."""
    return f"{PREFIX}:{{{ws}}}"


# KEYS[2] of every workspace script (``P:~``), never written: while the workspace's slot
# migrates, Redis Cluster answers ASK (the node handing it over) or TRYAGAIN (the node
# taking it) for a declared key it lacks, so the script runs nowhere until the slot has
# moved, instead of on the part of the workspace's keys moved so far (README Resharding).
SLOT_GUARD = ":~"


def ws_keys(ws: str) -> list[str]:
    """What a workspace script declares: :func:`ws_prefix` and the slot guard."""
    return [prefix := ws_prefix(ws), prefix + SLOT_GUARD]  # the prefix formatted once


_WS_OF: dict[str, str] = {}  # well-formed app id -> its workspace (bounded)
_WS_OF_MAX = 65_536


def tenant(ws: str, owner: str | None) -> str:
    """Whose share of a worker's bot connections, WebSocket seats and name lookups a
    workspace's traffic takes: its owner's (``@<user>``; every workspace one user owns
    counts as one tenant), else, with no owner projected, the workspace's own."""
    return f"@{owner}" if owner else ws


def workspace_of(app_id: str) -> str | None:
    """The workspace an app id belongs to, or ``None`` for a malformed id.

    App ids are ``<workspace>_<suffix>``, so admission needs no lookup to find the
    hash tag, and an app can never move to another workspace. Every message asks several
    times, and the match costs ten times a dict look-up, so well-formed ids (65 characters
    at most) are remembered, up to a bound: once made-up ids from a client have filled it,
    the whole is forgotten and filled again by what comes next.
    """
    ws = _WS_OF.get(app_id)
    if ws is not None:
        return ws
    m = APP_RE.fullmatch(app_id)
    if m is None:
        return None
    ws = m.group(1)
    if len(_WS_OF) >= _WS_OF_MAX:
        _WS_OF.clear()  # cheaper than an LRU's bookkeeping on every hit
    _WS_OF[app_id] = ws
    return ws


def ws_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:ws"


def app_key(ws: str, app: str) -> str:
    return f"{ws_prefix(ws)}:a:{app}"


def idem_key(ws: str, app: str, rid: str) -> str:
    """The charge record of :func:`record_id` ``rid`` (where admit.lua writes it)."""
    return f"{ws_prefix(ws)}:i:{app}:{record_name(rid)}"


def legacy_idem_key(ws: str, app: str, rid: str) -> str:
    """Where earlier versions kept that record (still read, see lib_records.lua)."""
    return f"{ws_prefix(ws)}:i:{app}:{rid}"


# The id of a channel key longer than this (bytes) is named by its digest: "h:" and 40 hex digits.
RID_NAME_MAX = 42


def record_name(rid: str) -> str:
    """The name of a charge record: its id, or for the id of a channel key longer than a
    digest (a channel user and key may be 256 characters each) ``h:<sha1 hex of the
    id>``. Mirrored in meter/lua/lib_records.lua."""
    raw = rid.encode()
    if len(raw) <= RID_NAME_MAX or not rid.startswith("k:"):
        return rid
    return "h:" + hashlib.sha1(raw, usedforsecurity=False).hexdigest()


def free_keys_key(ws: str, app: str) -> str:
    """The count of the app's keyed records that took no money (see the layout above)."""
    return f"{ws_prefix(ws)}:ik:{app}"


def free_keys_ws_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:ikw"


def record_id(channel: str, user: str, key: str, token: str) -> str:
    """The charge record's id: a channel idempotency key is scoped to the channel and
    channel user (the same key from another user is another message); without a key,
    the attempt's token. Mirrored in admit.lua."""
    return f"k:{channel}\t{user}\t{key}" if key else f"t:{token}"


def reservations_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:rsv"


def agg_key(ws: str, bucket_s: int) -> str:
    return f"{ws_prefix(ws)}:ag:{bucket_s}"


def agg_index_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:agi"


def sessions_key(ws: str, bucket_s: int) -> str:
    return f"{ws_prefix(ws)}:sr:{bucket_s}"


def sessions_index_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:sri"


def events_key(ws: str) -> str:
    return f"{ws_prefix(ws)}:ev"


def usage_limit_key(ws: str, product: str, period: str) -> str:
    return f"{ws_prefix(ws)}:lu:{product}:{period}"


def rate_keys(ws: str, app: str) -> tuple[str, str]:
    return f"{ws_prefix(ws)}:rm:{app}", f"{ws_prefix(ws)}:rh:{app}"


# The one separator of the composite strings in Redis: an admission's ARGV, a billing
# session's field, a charge record's id, an aggregate field all join their parts with a
# tab (no part can hold one: ids, channels, products, units and metrics are
# ``[a-z0-9_:-]``, users and idempotency keys printable). Mirrored in meter/lua.
SEP = "\t"


def agg_field(app: str, channel: str, product: str, unit: str, metric: str) -> str:
    """A field of an aggregate hash ``P:ag:<bucket_s>``; metrics: ``n`` units, ``m``
    messages, ``f``/``a``/``p``/``i`` free/app/pool/invoiced amounts, ``x`` refunds,
    ``r:<reason>`` refusals, ``s:<reason>`` shadow-mode refusals."""
    return SEP.join((app, channel, product, unit, metric))


def agg_field_parts(field: str | bytes) -> tuple[str, str, str, str, str]:
    """``(app, channel, product, unit, metric)`` of an aggregate field. A field written
    before 0.2, with ``|`` between its parts, still reads (a bucket not yet flushed)."""
    text = field.decode() if isinstance(field, bytes) else field
    app, channel, product, unit, metric = text.split(SEP if SEP in text else "|")
    return app, channel, product, unit, metric


# Balance fields (docs/glossary.md), mirrored in meter/lua (admit_batch.lua's F_*,
# grant.lua, refund.lua): the workspace's pool and the sum of its apps' balances, and an
# app's own balance. Before 0.2 they were ``paid``, ``apaid`` and ``paid`` (renamed in
# place at start-up by rename_fields.lua).
F_POOL = "pool"
F_APPS = "apps"
F_APP = "app"

# Workspace ids known to Redis (for the flusher and reconcile on a store-less path).
# Not hash-tagged by workspace: only written by the admin path, never by a script.
WORKSPACES = f"{PREFIX}:workspaces"
# Pub/sub channel announcing config changes (app id or workspace id as payload).
CHANGES = f"{PREFIX}:changes"


def apps_key(ws: str) -> str:
    """Set of the workspace's app ids (grants clear their ``inactive`` flag)."""
    return f"{ws_prefix(ws)}:apps"


def grant_marker_key(ws: str, reference: str) -> str:
    """A grant's marker key as earlier versions kept it (see :func:`grant_field`)."""
    return f"{ws_prefix(ws)}:g:{reference}"


def grant_field(reference: str) -> str:
    """The field of the workspace hash marking a grant applied (mirrored in grant.lua)."""
    return f"g:{reference}"


# Field of the workspace hash: 1 once every grant of the ledger has its ``g:`` field, so a
# missing one means the grant was never applied (before, only the separate marker key).
F_MARKED = "gm"


def claim_key(ws: str, kind: str, bucket_s: int, gen: int) -> str:
    """A claimed bucket (``kind`` = ``ag``|``sr``|``ev``), immutable until acked."""
    return f"{ws_prefix(ws)}:c:{kind}:{bucket_s}:{gen}"


def lease_key(ws: str, kind: str, bucket_s: int) -> str:
    return f"{ws_prefix(ws)}:lease:{kind}:{bucket_s}"


def claims_key(ws: str) -> str:
    """Hash of outstanding claims ``<kind>:<bucket_s>`` -> gen."""
    return f"{ws_prefix(ws)}:cl"


def claim_records_key(ws: str) -> str:
    """Sorted set of claim records ``<kind>:<bucket_s>`` -> gen, and ``~`` -> floor."""
    return f"{ws_prefix(ws)}:fl"


def webhook_wake_key(ws: str) -> str:
    """Set (with a TTL) while saving the webhook may not wake overdue notifications again."""
    return f"{ws_prefix(ws)}:wk"
