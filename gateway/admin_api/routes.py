"""The admin API route table (DESIGN §3): the one list that routing and OpenAPI read."""

from __future__ import annotations

from gateway.admin_api import account_handlers as acc
from gateway.admin_api import app_handlers as apps
from gateway.admin_api import money_handlers as money
from gateway.admin_api import report_schemas as r
from gateway.admin_api import schemas as s
from gateway.admin_api.http import Route
from meter import keys

WS = {"ws": keys.ID_RE}
APP = {"app": keys.APP_RE}

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/users", acc.create_user, "Create a user", "operator",
          body=s.UserCreate, response=s.UserOut, status=201),
    Route("POST", "/v1/workspaces", acc.create_workspace,
          "Create a standard workspace with its free credits", "any user",
          body=s.WorkspaceCreate, response=s.WorkspaceOut, status=201),
    Route("GET", "/v1/workspaces/{ws}", acc.get_workspace, "Read a workspace", "members",
          response=s.WorkspaceOut, params=WS),
    Route("POST", "/v1/workspaces/{ws}/members", acc.add_member, "Add a user to the workspace",
          "workspace owner", body=s.MemberAdd, response=s.MemberOut, status=201, also=(200,),
          params=WS),
    Route("POST", "/v1/workspaces/{ws}/apps", apps.create_app, "Create an app", "members",
          body=s.AppCreate, response=s.AppOut, status=201, params=WS),
    Route("GET", "/v1/apps/{app}", apps.get_app, "Read an app",
          "app owner, workspace owner", response=s.AppOut, params=APP),
    Route("PATCH", "/v1/apps/{app}", apps.patch_app, "Change an app",
          "app owner, workspace owner", body=s.AppPatch, response=s.AppOut, params=APP),
    Route("POST", "/v1/apps/{app}/collaborators", apps.add_collaborator,
          "Invite a collaborator", "app owner, workspace owner", body=s.CollaboratorAdd,
          response=s.CollaboratorOut, status=201, params=APP),
    Route("POST", "/v1/apps/{app}/transfer", apps.transfer,
          "Hand the app to another workspace user", "app owner, workspace owner",
          body=s.Transfer, response=s.AppOut, params=APP),
    Route("POST", "/v1/workspaces/{ws}/funds", money.add_funds,
          "Add paid funds (idempotent by reference)", "workspace owner",
          body=s.FundsAdd, response=s.FundsOut, status=201, also=(200,), params=WS),
    Route("POST", "/v1/workspaces/{ws}/upgrade", acc.upgrade,
          "Make the workspace enterprise with per-product licences", "operator",
          body=s.Upgrade, response=s.WorkspaceOut, params=WS),
    Route("POST", "/v1/workspaces/{ws}/upgrade-requests", acc.create_upgrade_request,
          "Ask for the enterprise upgrade", "workspace owner",
          body=s.UpgradeRequestCreate, response=s.UpgradeRequestOut, status=201, params=WS),
    Route("GET", "/v1/upgrade-requests", acc.list_upgrade_requests,
          "Open upgrade requests", "operator", response=s.UpgradeRequestList),
    Route("GET", "/v1/workspaces/{ws}/plan-usage", money.get_plan_usage,
          "Plan, credits, balances, allowed units and app statuses",
          "workspace owner, operator", response=r.PlanUsageOut, params=WS),
    Route("GET", "/v1/workspaces/{ws}/usage", money.get_usage, "Usage series",
          "workspace owner, operator, app owner (own apps)",
          query=s.UsageQuery, response=r.UsageOut, params=WS),
    Route("GET", "/v1/workspaces/{ws}/sessions", money.get_sessions,
          "Billing-session detail (JSON, or CSV with Accept: text/csv)",
          "workspace owner, operator, app owner (own apps)",
          query=s.UsageQuery, response=r.SessionsOut, params=WS, csv=True),
    Route("PUT", "/v1/workspaces/{ws}/webhook", acc.set_webhook,
          "Where owner notifications go (HMAC-SHA256 signed)", "workspace owner",
          body=s.WebhookSet, response=s.WebhookOut, params=WS),
)  # fmt: skip
