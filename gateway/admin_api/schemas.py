"""Request and response bodies of the admin API, as pydantic models.

These models are the one definition of every body: requests are validated with them
(strict types, unknown fields rejected, limits on every string) and
:mod:`gateway.admin_api.openapi` renders the OpenAPI document from them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import SkipJsonSchema

from meter.redis_layer import keys

Product = Literal["automation", "search", "contact_center", "agent"]
CollaboratorRole = Literal["developer", "tester", "viewer"]

ID_PATTERN = keys.ID_RE.pattern
APP_PATTERN = keys.APP_RE.pattern
# Top-ups are whole cents; the configured minimum and maximum are checked on top.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2,6}$"
URL_PATTERN = r"^https?://[^\s/?#]+"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
REFERENCE_PATTERN = r"^[A-Za-z0-9._:-]{1,100}$"

# What a value failing each pattern should have looked like (for 422 messages).
PATTERN_HINTS = {
    ID_PATTERN: "must be an id of 4-32 lowercase letters or digits",
    APP_PATTERN: "must be an app id such as w1a2b3c4d5e6f_0a1b2c3d4e5f",
    AMOUNT_PATTERN: "must be a plain decimal string with at most 2 decimals, e.g. '100.00'",
    URL_PATTERN: "must be an absolute http:// or https:// URL",
    EMAIL_PATTERN: "must be an email address",
    REFERENCE_PATTERN: "must be 1-100 of A-Z a-z 0-9 . _ : -",
    keys.CHANNEL_RE.pattern: "must be a channel name: lowercase letters, digits, _ or -",
}

Name = Annotated[str, Field(min_length=1, max_length=200)]
Email = Annotated[str, Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN)]
UserId = Annotated[str, Field(pattern=ID_PATTERN, examples=["u1a2b3c4d5e6f"])]
AppId = Annotated[str, Field(pattern=APP_PATTERN)]
Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=URL_PATTERN)]
Amount = Annotated[str, Field(pattern=AMOUNT_PATTERN, examples=["100.00"])]
Money = Annotated[str, Field(pattern=MONEY_PATTERN, examples=["499.80"])]
Reference = Annotated[str, Field(pattern=REFERENCE_PATTERN)]
Timestamp = Annotated[str, Field(description="ISO 8601 UTC", examples=["2027-01-15T08:00:00.000Z"])]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(**kw: Any) -> Any:
    """An optional member: may be omitted, but not sent as ``null`` (unless nullable)."""
    return Field(default=None, json_schema_extra=_drop_default, **kw)


class Body(BaseModel):
    """A request body: strict JSON types, no unknown members, no stray ``null``s."""

    model_config = ConfigDict(extra="forbid", strict=True)
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _no_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.NULLABLE:
            raise ValueError("must not be null; omit the member instead")
        return value


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------- requests


class UserCreate(Body):
    email: Email
    name: Name


class WorkspaceCreate(Body):
    name: Name


class MemberAdd(Body):
    user_id: UserId


class AppCreate(Body):
    name: Name
    product: Product
    upstream_url: Url | SkipJsonSchema[None] = optional()


class AppPatch(Body):
    """Only the members sent change; ``upstream_url: null`` clears the URL."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"upstream_url"})
    use_free_credits: bool | SkipJsonSchema[None] = optional()
    upstream_url: Url | None = optional()
    suspended: bool | SkipJsonSchema[None] = optional()


class ShadowSet(Body):
    """Shadow mode: metered and recorded, never refused (refusals counted, not applied);
    for rolling creditgate out in front of live bots. Operators only."""

    shadow: bool


class CollaboratorAdd(Body):
    user_id: UserId
    role: CollaboratorRole


class Transfer(Body):
    user_id: UserId


class LicenceIn(Body):
    usage_limit: int = Field(ge=1, le=10**12, description="billable units per billing period")
    per_minute: int = Field(ge=1, le=10**7)
    per_hour: int = Field(ge=1, le=10**9)


class Upgrade(Body):
    licences: dict[Product, LicenceIn] = Field(min_length=1)


class UpgradeRequestCreate(Body):
    products: list[Product] = Field(min_length=1, max_length=4)
    message: Annotated[str, Field(max_length=4000)] | SkipJsonSchema[None] = optional(
        description="at most 2000 characters once CRLF line ends became newlines"
    )


class WorkspacePatch(Body):
    """Only the members sent change; ``low_balance_threshold: null`` restores the default."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"low_balance_threshold"})
    low_balance_threshold: Amount | None = optional(
        description="alert (and show low_balance) when the usable balance is under this"
    )


class WebhookSet(Body):
    url: Url
    secret: str = Field(min_length=16, max_length=256)


class ChannelSet(Body):
    """A channel's verification secret (never returned): the Slack signing secret, the
    Meta app secret, the bot's Microsoft App ID, or the HS256 key of other channels."""

    secret: str = Field(min_length=32, max_length=512)
    notify_secret: Annotated[str, Field(min_length=32, max_length=512)] | SkipJsonSchema[None] = (
        optional(description="HS256 key of /notify tokens; default: the secret (msteams: none)")
    )


# ------------------------------------------------------------------------ responses


class Problem(Out):
    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    field: str | None = None


class UserOut(Out):
    id: str
    email: str
    name: str
    token: str = Field(description="shown once; only its hash is stored")
    created_at: Timestamp


class LicenceOut(Out):
    usage_limit: int
    per_minute: int
    per_hour: int


_OWNER_ONLY = "workspace owner and operators only: left out for other members"


class WorkspaceOut(Out):
    id: str
    name: str
    type: Literal["standard", "enterprise"]
    owner_id: str
    created_at: Timestamp
    licences: dict[str, LicenceOut]
    # Money figures (account_handlers.WORKSPACE_MONEY): the owner's and operators' only.
    free_credits_expire_at: Timestamp | None = Field(None, description=_OWNER_ONLY)
    low_balance_threshold: Money | None = Field(
        None, description="the owner's own (null: the default); " + _OWNER_ONLY
    )


# Adding a member or collaborator invites them; they join when they accept.
JoinStatus = Literal["invited", "active"]


class MemberOut(Out):
    workspace_id: str
    user_id: str
    added: bool = Field(description="this call opened the invitation (201)")
    status: JoinStatus = Field(
        description="invited: pending until the user accepts (an unknown user id is "
        "answered alike, and nobody can accept for it); active: already a member"
    )


class CollaboratorOut(Out):
    app_id: str
    user_id: str
    role: CollaboratorRole
    status: JoinStatus = Field(
        default="active",
        description="invited: the role is offered until the user accepts; active: held",
    )


class AppUsageOut(Out):
    """Counts a collaborator may see (no money): the last 30 days, live buckets included."""

    since: Timestamp
    sessions: int
    requests: int
    notifications: int
    messages: int
    live: bool = Field(description="false when Redis did not answer: stored counts only")


class AppOut(Out):
    id: str
    workspace_id: str
    name: str
    product: Product
    owner_id: str
    upstream_url: str | None = Field(
        description="null when unset, and to callers who may not change it (collaborators)"
    )
    use_free_credits: bool
    suspended: bool
    shadow: bool = False
    created_at: Timestamp
    collaborators: list[CollaboratorOut] | None = Field(
        None,
        description="app owner, workspace owner and operators only (who may read "
        "/collaborators): left out for collaborators",
    )
    usage: AppUsageOut | None = None


class UpgradeRequestOut(Out):
    id: str
    workspace_id: str
    products: list[str]
    message: str | None
    status: Literal["open", "granted", "declined"]
    created_at: Timestamp
    decided_at: Timestamp | None = None
    reason: str | None = Field(default=None, description="why an operator declined it")


class ChannelOut(Out):
    app_id: str
    channel: str
    scheme: Literal["slack_v0", "meta_sha256", "botframework_jwt", "jwt_hs256"]
    enabled: bool
    notify: bool = Field(description="whether /notify of this channel can be authenticated")
    updated_at: Timestamp | None = None


class ChannelList(Out):
    items: list[ChannelOut]


class WebhookOut(Out):
    workspace_id: str
    url: str
    secret_set: bool
