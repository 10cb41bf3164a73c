"""The admin API route table (docs/design.md §3): what routing, access and OpenAPI read.

Adding a route: one ``Route(method, path, handler, summary, access, ...)`` line below.
``access`` is the route's policy from :mod:`gateway.admin_api.access`, evaluated by the
pipeline after authentication and the path-id checks and BEFORE the query or body is
read, so a caller who may not use a route gets 401/403/404 whatever they send:

* ``a.OPERATOR`` / ``a.ANY_USER`` / ``a.ANY_CALLER`` - by token kind alone;
* ``a.workspace("members.read")`` - the roles ``meter.accounts.authz.WORKSPACE_RULES`` allows for
  that action in the workspace of ``{ws}`` (give ``params=WS``); 404 when the caller may
  not see the workspace; ``a.app("channels.set")`` likewise with ``APP_RULES`` on
  ``{app}``; a new action is one line in those tables;
* ``a.PUBLIC`` - no bearer token at all (a provider webhook that verifies its own
  signature in the handler).

The handler then finds what the check loaded in ``call.workspace`` / ``call.app`` /
``call.roles``; only checks that depend on the body stay in the handler. Add the route
to the matrix of ``tests/system/test_authz_matrix.py`` (a test fails until you do).
"""

from __future__ import annotations

from gateway.admin_api import access as a
from gateway.admin_api import account_handlers as acc
from gateway.admin_api import app_handlers as apps
from gateway.admin_api import invitation_handlers as inv
from gateway.admin_api import list_handlers as lists
from gateway.admin_api import list_schemas as ls
from gateway.admin_api import money_handlers as money
from gateway.admin_api import payment_handlers as pay
from gateway.admin_api import query_schemas as qs
from gateway.admin_api import report_schemas as r
from gateway.admin_api import schemas as s
from gateway.admin_api.http import Route
from meter.accounts.authz import APP_SPENDING
from meter.redis_layer import keys

WS = {"ws": keys.ID_RE}
APP = {"app": keys.APP_RE}
WS_USER = {"ws": keys.ID_RE, "user": keys.ID_RE}
APP_USER = {"app": keys.APP_RE, "user": keys.ID_RE}
INVITATION = {"invitation": keys.ID_RE}
CHANNEL = {"app": keys.APP_RE, "channel": keys.CHANNEL_RE}
# Every app write allowed to the app owner: the write lands only while the owner checked
# still owns the app (meter/store: expect_owner; gateway.admin_api.access.Grant).
OWNER_CHANGED = (
    "; 409 owner_changed (nothing changed) when the caller, allowed as the app's owner, "
    "no longer owns it: the app was handed over after their role was checked"
)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/users", acc.create_user, "Create a user", a.OPERATOR,
          body=s.UserCreate, response=s.UserOut, status=201),
    Route("POST", "/v1/workspaces", acc.create_workspace,
          "Create a standard workspace with its free credits; 409 too_many_workspaces when "
          "the caller owns max_workspaces_per_user (default 20) already", a.ANY_USER,
          body=s.WorkspaceCreate, response=s.WorkspaceOut, status=201,
          errors=(400, 401, 403, 404, 409, 422)),
    Route("GET", "/v1/workspaces/{ws}", acc.get_workspace, "Read a workspace",
          a.workspace("workspace.read"), response=s.WorkspaceOut, params=WS),
    Route("PATCH", "/v1/workspaces/{ws}", acc.patch_workspace,
          "Change the workspace's own settings (low-balance threshold)",
          a.workspace("workspace.update"), body=s.WorkspacePatch, response=s.WorkspaceOut,
          params=WS),
    Route("POST", "/v1/workspaces/{ws}/members", acc.add_member,
          "Add a user to the workspace: invites them (status invited); they join when they "
          "accept. 201: a new invitation; 200: already invited or a member (status active); "
          "409 too_many_invitations past 100 pending (to the workspace, from the inviter, or "
          "of the user from this workspace and its apps)",
          a.workspace("members.add"), body=s.MemberAdd, response=s.MemberOut, status=201,
          also=(200,), params=WS),
    Route("POST", "/v1/workspaces/{ws}/apps", apps.create_app,
          "Create an app; 409 too_many_apps when the workspace holds max_apps_per_workspace "
          "(default 100) already", a.workspace("apps.create"), body=s.AppCreate, response=s.AppOut,
          status=201, errors=(400, 401, 403, 404, 409, 422), params=WS),
    Route("GET", "/v1/apps/{app}", apps.get_app, "Read an app",
          a.app("app.read"), response=s.AppOut, params=APP),
    Route("PATCH", "/v1/apps/{app}", apps.patch_app, "Change an app" + OWNER_CHANGED,
          a.app("app.update", members=APP_SPENDING), body=s.AppPatch, response=s.AppOut,
          params=APP),
    Route("PUT", "/v1/apps/{app}/shadow", apps.set_shadow,
          "Shadow mode: metered and recorded, never refused (operator's roll-out tool)",
          a.app("app.shadow"), body=s.ShadowSet, response=s.AppOut, params=APP),
    Route("POST", "/v1/apps/{app}/collaborators", apps.add_collaborator,
          "Invite a collaborator: they hold the role once they accept (status invited); an "
          "active collaborator's role changes at once (status active); 409 "
          "too_many_invitations past 100 pending (to the app, from the inviter, or of the "
          "user from this workspace and its apps)" + OWNER_CHANGED, a.app("collaborators.add"),
          body=s.CollaboratorAdd, response=s.CollaboratorOut, status=201, params=APP),
    Route("POST", "/v1/apps/{app}/transfer", apps.transfer,
          "Hand the app to another workspace user" + OWNER_CHANGED, a.app("app.transfer"),
          body=s.Transfer, response=s.AppOut, params=APP),
    Route("GET", "/v1/apps/{app}/channels", apps.list_channels,
          "Channels of the app with a verification secret (never the secret)",
          a.app("channels.read"), response=s.ChannelList, params=APP),
    Route("PUT", "/v1/apps/{app}/channels/{channel}", apps.put_channel,
          "Enable channel authentication with its secret (never returned); 409 "
          "too_many_channels when the app has max_channels_per_app (default 20) others"
          + OWNER_CHANGED,
          a.app("channels.set"), body=s.ChannelSet, response=s.ChannelOut,
          params=CHANNEL),
    Route("DELETE", "/v1/apps/{app}/channels/{channel}", apps.delete_channel,
          "Remove the channel's secret: its traffic is unauthenticated again" + OWNER_CHANGED,
          a.app("channels.set"), response=s.ChannelOut, params=CHANNEL),
    Route("POST", "/v1/workspaces/{ws}/funds", money.add_funds,
          "Credit paid funds by hand, e.g. a bank transfer (idempotent by reference)",
          a.workspace("funds.add"), body=r.FundsAdd, response=r.FundsOut, status=201,
          also=(200,), params=WS),
    Route("POST", "/v1/workspaces/{ws}/refund-credits", pay.credit_back_refund,
          "Credit back a refund that failed at the provider: its amount, once, into the "
          "pool its payment credited, at most what that payment's reversals took back",
          a.workspace("funds.add"), body=r.RefundCreditAdd, response=r.RefundCreditOut,
          status=201, also=(200,), params=WS, errors=(400, 401, 403, 404, 409, 422)),
    Route("POST", "/v1/workspaces/{ws}/checkout", pay.create_checkout,
          "Start a top-up with the payment provider; funds arrive when it confirms",
          a.workspace("checkout.create"), body=r.CheckoutCreate, response=r.CheckoutOut, status=201,
          params=WS, errors=(400, 401, 403, 404, 409, 422, 502)),
    Route("POST", "/v1/payments/stripe/webhook", pay.stripe_webhook,
          "The provider's signed event: credits a confirmed payment exactly once",
          a.PUBLIC, response=r.PaymentWebhookOut,
          errors=(400, 408, 502)),
    Route("GET", "/v1/workspaces/{ws}/transactions", pay.list_transactions,
          "The ledger, newest first: free grants, lapses, top-ups, manual credits",
          a.workspace("transactions.read"), query=ls.ListQuery, response=r.TransactionsOut,
          params=WS),
    Route("POST", "/v1/workspaces/{ws}/upgrade", acc.upgrade,
          "Make the workspace enterprise with per-product licences", a.workspace("upgrade"),
          body=s.Upgrade, response=s.WorkspaceOut, params=WS),
    Route("POST", "/v1/workspaces/{ws}/upgrade-requests", acc.create_upgrade_request,
          "Ask for the enterprise upgrade: one open request per workspace (the same one "
          "again answers it, 200; another is 409 upgrade_request_open)",
          a.workspace("upgrade_requests.create"), body=s.UpgradeRequestCreate,
          response=s.UpgradeRequestOut, status=201, also=(200,), params=WS),
    Route("GET", "/v1/upgrade-requests", lists.list_open_upgrade_requests,
          "Open upgrade requests of every workspace, oldest first", a.OPERATOR,
          query=ls.ListQuery, response=ls.UpgradeRequestPage),
    Route("GET", "/v1/workspaces/{ws}/plan-usage", money.get_plan_usage,
          "Plan, credits, balances, allowed units and app statuses",
          a.workspace("plan_usage.read"), response=r.PlanUsageOut, params=WS),
    Route("GET", "/v1/workspaces/{ws}/usage", money.get_usage, "Usage series",
          a.workspace("usage.read"),
          query=qs.UsageQuery, response=r.UsageOut, params=WS),
    Route("GET", "/v1/workspaces/{ws}/sessions", money.get_sessions,
          "Billing-session detail (JSON, or CSV with Accept: text/csv: without cursor or"
          " limit, every session of the range in one streamed answer)",
          a.workspace("usage.read"),
          query=ls.SessionsQuery, response=r.SessionsOut, params=WS, csv=True),
    Route("PUT", "/v1/workspaces/{ws}/webhook", acc.set_webhook,
          "Where owner notifications go (HMAC-SHA256 signed)", a.workspace("webhook.set"),
          body=s.WebhookSet, response=s.WebhookOut, params=WS),
    # The owner's console (issue 11): lists beside the writes, removals, API tokens.
    Route("GET", "/v1/workspaces", lists.list_workspaces,
          "The caller's workspaces (operators: all), with the caller's role", a.ANY_CALLER,
          query=ls.ListQuery, response=ls.WorkspaceList),
    Route("GET", "/v1/workspaces/{ws}/apps", lists.list_apps,
          "Apps of the workspace (a collaborator: the apps they work on)", a.APPS_LISTER,
          query=ls.ListQuery, response=ls.AppList, params=WS),
    Route("GET", "/v1/workspaces/{ws}/members", lists.list_members, "Members of the workspace",
          a.workspace("members.read"), query=ls.ListQuery, response=ls.MemberList, params=WS),
    Route("DELETE", "/v1/workspaces/{ws}/members/{user}", lists.remove_member,
          "Take a user out of the workspace, or withdraw their invitation, and off its apps "
          "(collaborations and invitations there; not its owner; apps transferred first)",
          a.workspace("members.remove"), status=204, params=WS_USER),
    Route("GET", "/v1/apps/{app}/collaborators", lists.list_collaborators,
          "Collaborators of the app", a.app("collaborators.read"),
          query=ls.ListQuery, response=ls.CollaboratorList, params=APP),
    Route("DELETE", "/v1/apps/{app}/collaborators/{user}", lists.remove_collaborator,
          "Take a collaborator off the app, or withdraw their invitation" + OWNER_CHANGED,
          a.app("collaborators.remove"), status=204,
          params=APP_USER),
    Route("GET", "/v1/workspaces/{ws}/upgrade-requests",
          lists.list_workspace_upgrade_requests,
          "The workspace's upgrade requests with their status, newest first",
          a.workspace("upgrade_requests.read"), query=ls.ListQuery, response=ls.UpgradeRequestPage,
          params=WS),
    Route("POST", "/v1/upgrade-requests/{request}/decline", lists.decline_upgrade_request,
          "Decline an open upgrade request, saying why", a.OPERATOR, body=ls.UpgradeDecline,
          response=ls.UpgradeRequestItem, params={"request": keys.ID_RE}),
    # Consent to membership: the invitee's own invitations (anyone else's id: 404).
    Route("GET", "/v1/invitations", inv.list_invitations,
          "Your pending invitations to workspaces and apps, oldest first", a.ANY_USER,
          query=ls.ListQuery, response=ls.InvitationList),
    Route("POST", "/v1/invitations/{invitation}/accept", inv.accept_invitation,
          "Accept one of your invitations: you become a member or collaborator",
          a.ANY_USER, response=ls.InvitationAnswer, params=INVITATION),
    Route("POST", "/v1/invitations/{invitation}/decline", inv.decline_invitation,
          "Decline one of your invitations (it is deleted)", a.ANY_USER,
          response=ls.InvitationAnswer, params=INVITATION),
    Route("GET", "/v1/tokens", lists.list_tokens, "Your API tokens (never the secrets)",
          a.ANY_USER, query=ls.ListQuery, response=ls.TokenList),
    Route("POST", "/v1/tokens", lists.create_token, "Create an API token (shown once)",
          a.ANY_USER, body=ls.TokenCreate, response=ls.TokenCreated, status=201),
    Route("DELETE", "/v1/tokens/{token}", lists.revoke_token,
          "Revoke one of your API tokens (401 for it from the next request)", a.ANY_USER,
          status=204, params={"token": keys.ID_RE}),
)  # fmt: skip
