"""Bodies of the console's routes: paginated lists, removals' inputs, API tokens.

Every list answers ``{<items>: [...], next_cursor}``; ``next_cursor`` is ``null`` on the
last page and otherwise goes back as ``?cursor=`` (with the same filters) for the next.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from gateway.admin_api.query_schemas import UsageQuery
from gateway.admin_api.schemas import (
    Body,
    CollaboratorRole,
    Name,
    Out,
    Product,
    Timestamp,
    optional,
)

Cursor = Annotated[str, Field(min_length=1, max_length=400)]
Limit = Annotated[str, Field(pattern=r"^[0-9]{1,3}$", description="page size, 1-200 (50)")]


class ListQuery(Body):
    """``cursor`` (from ``next_cursor``) and ``limit`` of a paginated list."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cursor: Cursor | SkipJsonSchema[None] = optional()
    limit: Limit | SkipJsonSchema[None] = optional()


class SessionsQuery(UsageQuery):
    """The usage filters plus pagination and order (``desc``: newest first)."""

    cursor: Cursor | SkipJsonSchema[None] = optional()
    limit: Limit | SkipJsonSchema[None] = optional()
    order: Literal["asc", "desc"] | SkipJsonSchema[None] = optional()


class Listing(Out):
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: last")


class WorkspaceItem(Out):
    id: str
    name: str
    type: Literal["standard", "enterprise"]
    owner_id: str
    created_at: Timestamp
    role: Literal["owner", "member", "collaborator", "operator"] = Field(
        description="the caller's role in the workspace"
    )


class WorkspaceList(Listing):
    workspaces: list[WorkspaceItem]


class AppItem(Out):
    id: str
    workspace_id: str
    name: str
    product: Product
    owner_id: str
    suspended: bool
    use_free_credits: bool
    created_at: Timestamp
    role: Literal["owner", "workspace_owner", "collaborator", "member", "operator"] = Field(
        description="the caller's relation to the app"
    )


class AppList(Listing):
    apps: list[AppItem]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def until_accepted(**kw: Any) -> Any:
    """A member a pending invitee's item leaves out (not even ``null``)."""
    return Field(
        default=None, exclude_if=lambda v: v is None, json_schema_extra=_drop_default, **kw
    )


JoinStatus = Literal["active", "invited"]
STATUS = "invited: a pending invitation, shown by user id alone until the user accepts"


class MemberItem(Out):
    user_id: str
    email: str | SkipJsonSchema[None] = until_accepted(description="absent while invited")
    name: str | SkipJsonSchema[None] = until_accepted(description="absent while invited")
    role: Literal["owner", "member"]
    status: JoinStatus = Field(description=STATUS)


class MemberList(Listing):
    members: list[MemberItem]


class CollaboratorItem(Out):
    user_id: str
    email: str | SkipJsonSchema[None] = until_accepted(description="absent while invited")
    name: str | SkipJsonSchema[None] = until_accepted(description="absent while invited")
    role: CollaboratorRole = Field(description="held, or offered while invited")
    status: JoinStatus = Field(description=STATUS)


class CollaboratorList(Listing):
    collaborators: list[CollaboratorItem]


class TokenCreate(Body):
    name: Name


class TokenItem(Out):
    id: str
    name: str
    hint: str = Field(description="the token's last 4 characters (empty: not known)")
    prefix: str
    created_at: Timestamp
    current: bool = Field(description="the token this request was made with")


class TokenCreated(TokenItem):
    token: str = Field(description="shown once; only its hash is stored")


class TokenList(Listing):
    tokens: list[TokenItem]


class UpgradeDecline(Body):
    reason: Annotated[str, Field(min_length=1, max_length=4000)] = Field(
        description="at most 2000 characters once CRLF line ends became newlines"
    )


class UpgradeRequestItem(Out):
    id: str
    workspace_id: str
    products: list[str]
    message: str | None
    status: Literal["open", "granted", "declined"]
    created_at: Timestamp
    decided_at: Timestamp | None
    reason: str | None = Field(description="why an operator declined it")


class UpgradeRequestPage(Listing):
    requests: list[UpgradeRequestItem]


class InvitationItem(Out):
    """One of the caller's pending invitations: what it opens and who sent it."""

    id: str
    kind: Literal["workspace", "app"]
    workspace_id: str
    workspace_name: str
    app_id: str | None = Field(description="the app (kind app); null for a workspace")
    app_name: str | None
    role: CollaboratorRole | None = Field(description="the role offered on the app")
    invited_by: str = Field(description="the inviting user's id")
    inviter_name: str | None = Field(description="the inviting user's name (null: gone)")
    inviter_email: str | None = Field(description="the inviting user's email (null: gone)")
    created_at: Timestamp


class InvitationList(Listing):
    invitations: list[InvitationItem]


class InvitationAnswer(Out):
    """An accepted (``active``: the caller is now a member or collaborator) or declined
    invitation."""

    id: str
    kind: Literal["workspace", "app"]
    workspace_id: str
    app_id: str | None
    role: CollaboratorRole | None
    status: Literal["active", "declined"]
