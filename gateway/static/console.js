/* creditgate owner console: a small single-page app over the admin API.
 *
 * Signed in with a server-side session (HttpOnly cookie); every state-changing call
 * sends the session's CSRF token. The API token is typed once into the sign-in form
 * and never stored by this page. Pages: #/ws/<ws>/<page>[/<arg>].
 */
"use strict";

const state = {
  me: null,          // {user, csrf, links, topup}
  routes: new Set(), // "METHOD /v1/path" the server offers (from its OpenAPI document)
  workspaces: [],    // [{id, name, type, role}]
  current: null,     // the workspace last shown
};

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function groupDigits(intPart) {
  return intPart.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/* "1234.500000" -> "$1,234.50" (exact: works on the decimal string). */
function money(value) {
  if (value === null || value === undefined) return "—";
  let s = String(value);
  const neg = s.startsWith("-");
  if (neg) s = s.slice(1);
  let [i, f = ""] = s.split(".");
  f = (f + "00").slice(0, Math.max(2, f.replace(/0+$/, "").length));
  return (neg ? "-$" : "$") + groupDigits(i) + "." + f;
}

/* Integer micro-dollars -> the exact decimal string money() takes: 15000 -> "0.015".
   Integer arithmetic only (% and an exact division), never a float rounded to cents:
   amounts are shown exactly, as the server's chart and CSV show them (README, Owner
   console). */
function amountOf(micros) {
  const neg = micros < 0;
  const abs = Math.abs(micros);
  const frac = abs % 1000000;
  const whole = (abs - frac) / 1000000;
  return (neg ? "-" : "") + whole + "." + String(frac).padStart(6, "0");
}

function num(n) {
  return Number(n).toLocaleString("en-US");
}

function localDate(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleDateString(undefined, {year: "numeric", month: "short", day: "numeric"});
}

function localDateTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"});
}

function daysUntil(iso) {
  return Math.ceil((new Date(iso).getTime() - Date.now()) / 86400000);
}

function humanize(code) {
  return String(code || "").replace(/_/g, " ");
}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body, opts = {}) {
  const headers = {"Accept": opts.accept || "application/json"};
  if (method !== "GET" && state.me) headers["X-CSRF-Token"] = state.me.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && path !== "/ui/session") {
    state.me = null;
    showSignIn("Your session ended. Sign in again.");
    throw new ApiError(401, null);
  }
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, typeof data === "object" ? data : null);
  return data;
}

function has(method, path) {
  return state.routes.has(`${method} ${path}`);
}

async function allPages(path, member) {
  const out = [];
  let cursor = null;
  for (let i = 0; i < 50; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", `${path}${sep}limit=200` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    out.push(...page[member]);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return out;
}

function main() { return document.getElementById("main"); }

function setMain(...children) {
  const m = main();
  m.replaceChildren(...children.filter(c => c !== null && c !== undefined));
  m.removeAttribute("aria-busy");
}

function loading(what) {
  const m = main();
  m.setAttribute("aria-busy", "true");
  m.replaceChildren(h("p", {class: "loading"}, `Loading ${what}…`));
}

function errorBox(err, retry) {
  return h("div", {class: "banner bad", role: "alert"},
    h("p", {}, "Could not load this: ", err.message || String(err)),
    retry ? h("button", {type: "button", class: "secondary", onclick: retry}, "Try again") : null);
}

function table(columns, rows, caption) {
  const head = h("tr", {}, columns.map(c => h("th", {scope: "col", class: c.num ? "num" : null}, c.label)));
  const body = rows.map(r => h("tr", {}, columns.map(c => {
    const v = c.value(r);
    return h("td", {"data-label": c.label, class: c.num ? "num" : null}, v);
  })));
  return h("table", {}, caption ? h("caption", {class: "visually-hidden"}, caption) : null,
    h("thead", {}, head), h("tbody", {}, body));
}

function badge(text, kind) {
  return h("span", {class: `badge ${kind || ""}`}, humanize(text));
}

function downloadText(text, name, type) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = h("a", {href: url, download: name});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ------------------------------------------------------------------- sign in

function showSignIn(message) {
  for (const id of ["switcher", "who", "nav"]) document.getElementById(id).hidden = true;
  const err = h("p", {class: "error", role: "alert"}, message || "");
  const input = h("input", {id: "token", name: "token", type: "password", autocomplete: "off",
    required: true, "aria-describedby": "token-help"});
  const form = h("form", {method: "post", action: "/ui/session", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      state.me = await api("POST", "/ui/session", {token: input.value});
      input.value = "";
      await start();
    } catch (e) {
      err.textContent = e.status === 401 ? "That token is unknown or revoked." : e.message;
    } finally {
      button.disabled = false;
    }
  }},
    h("label", {for: "token"}, "API token"),
    input,
    h("p", {id: "token-help", class: "muted"},
      "Your token is exchanged once for a browser session; it is not kept by this page."),
    h("button", {type: "submit"}, "Sign in"));
  setMain(h("section", {class: "signin", "aria-labelledby": "signin-title"},
    h("h1", {id: "signin-title"}, "Sign in to the console"), form, err));
  document.title = "Sign in · creditgate console";
}

async function signOut() {
  try { await api("DELETE", "/ui/session"); } catch (e) { /* signed out anyway */ }
  state.me = null;
  location.hash = "";
  showSignIn("You are signed out.");
}

// --------------------------------------------------------------- navigation

function current() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "ws" && parts[1]) return {ws: parts[1], page: parts[2] || "", arg: parts[3] || ""};
  if (parts[0] === "tokens") return {ws: null, page: "tokens", arg: ""};
  if (parts[0] === "invitations") return {ws: null, page: "invitations", arg: ""};
  return {ws: null, page: "", arg: ""};
}

function pagesFor(ws) {
  const role = ws.role;
  const owner = role === "owner" || role === "operator";
  const pages = [];
  if (owner) pages.push(["overview", "Overview"]);
  if (owner || role === "member") pages.push(["usage", "Usage"]);
  pages.push(["apps", "Apps"]);
  if (owner) pages.push(["billing", "Billing"], ["team", "Team"]);
  return pages;
}

function renderNav(ws, page) {
  const list = document.getElementById("nav-list");
  const items = ws ? pagesFor(ws).map(([p, label]) => [`#/ws/${ws.id}/${p}`, label, p]) : [];
  items.push(["#/invitations", "Invitations", "invitations"], ["#/tokens", "API tokens", "tokens"]);
  list.replaceChildren(...items.map(([href, label, p]) => h("li", {},
    h("a", {href, "aria-current": (p === page || (p === "apps" && page === "app")) ? "page" : null}, label))));
  document.getElementById("nav").hidden = false;
}

function renderSwitcher(wsId) {
  const sel = document.getElementById("ws-select");
  sel.replaceChildren(...state.workspaces.map(w => h("option",
    {value: w.id, selected: w.id === wsId}, `${w.name} (${w.type}, ${humanize(w.role)})`)));
  document.getElementById("switcher").hidden = state.workspaces.length === 0;
}

async function route() {
  if (!state.me) return;
  const r = current();
  // The tokens and invitations pages belong to the user, not a workspace: keep the last
  // one's navigation.
  const own = r.page === "tokens" || r.page === "invitations";
  const ws = state.workspaces.find(w => w.id === r.ws)
    || (own ? (state.current || state.workspaces[0] || null) : null);
  if (ws) state.current = ws;
  if (!own && !ws) {
    if (state.workspaces.length) {
      const first = state.workspaces[0];
      location.replace(`#/ws/${first.id}/${pagesFor(first)[0][0]}`);
      return;
    }
    renderNav(null, "");
    setMain(h("h1", {}, "No workspace yet"),
      h("p", {}, "You are not a member of any workspace. Ask a workspace owner to invite you " +
        "and accept on the ", h("a", {href: "#/invitations"}, "Invitations"), " page, " +
        "or create a workspace through the API (POST /v1/workspaces)."));
    return;
  }
  renderSwitcher(ws ? ws.id : (state.workspaces[0] || {}).id);
  const page = r.page || (ws ? pagesFor(ws)[0][0] : "tokens");
  renderNav(ws, page);
  const views = {overview, usage: usagePage, apps: appsPage, app: appPage, billing, team,
    tokens: tokensPage, invitations: invitationsPage};
  const view = views[page] || appsPage;
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · creditgate console`;
  try {
    await view(ws, r.arg);
  } catch (e) {
    if (e.status !== 401) setMain(errorBox(e, route));
  }
  main().focus();
}

// ------------------------------------------------------------------ overview

function banners(pu) {
  const out = [];
  if (pu.plan === "standard") {
    const usable = Number(pu.usable_balance);
    if (usable < Number(pu.low_balance_threshold)) {
      out.push(h("div", {class: "banner warn", role: "status"},
        `Low balance: ${money(pu.usable_balance)} usable, under your ${money(pu.low_balance_threshold)} threshold. `,
        h("a", {href: `#/ws/${pu.workspace_id}/billing`}, "Add funds")));
    }
    const fc = pu.free_credits;
    if (fc.expires_at && Number(fc.remaining) > 0) {
      const days = daysUntil(fc.expires_at);
      if (days <= 14) {
        out.push(h("div", {class: "banner warn", role: "status"},
          `${money(fc.remaining)} of free credits expire in ${days} day${days === 1 ? "" : "s"} (${localDate(fc.expires_at)}).`));
      }
    }
  }
  const stopped = pu.apps.filter(a => a.status === "inactive");
  if (stopped.length) {
    out.push(h("div", {class: "banner bad", role: "status"},
      `${stopped.length} app${stopped.length === 1 ? " has" : "s have"} stopped responding on channels: `,
      // flatMap: h() flattens one level, and an array left inside would print as text.
      stopped.flatMap((a, i) => [i ? ", " : "", h("a", {href: `#/ws/${pu.workspace_id}/app/${a.id}`}, a.name),
        ` (${humanize(a.status_reason || "inactive")})`])));
  }
  return out;
}

// The owner's own low-balance threshold (empty: back to the default).
function thresholdForm(ws, pu) {
  const input = h("input", {id: "low-threshold", name: "low_balance_threshold", inputmode: "decimal",
    size: "8", value: pu.low_balance_threshold_is_default ? "" : pu.low_balance_threshold,
    placeholder: pu.low_balance_threshold_is_default ? pu.low_balance_threshold : ""});
  const err = h("p", {class: "error", role: "alert"});
  return h("form", {class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const value = input.value.trim();
    try {
      await api("PATCH", `/v1/workspaces/${ws.id}`, {low_balance_threshold: value === "" ? null : value});
      await overview(ws);
    } catch (e) { err.textContent = e.message; }
  }},
    h("label", {for: "low-threshold"}, "Alert under $", input),
    h("button", {type: "submit"}, "Save"), err);
}

function card(title, big, ...more) {
  return h("section", {class: "card"}, h("h2", {}, title), h("p", {class: "big"}, big), ...more);
}

async function overview(ws) {
  loading("the overview");
  let pu = null;
  let live = null;
  try {
    pu = await api("GET", `/v1/workspaces/${ws.id}/plan-usage`);
  } catch (e) {
    if (e.status === 401) throw e;
    live = e;
  }
  const parts = [h("h1", {}, ws.name, " ", badge(ws.type, ws.type))];
  if (!pu) {
    parts.push(h("div", {class: "banner bad", role: "alert"},
      "Live figures are unavailable right now (", live.message, "). Stored usage below is still current up to the last flush."));
  } else {
    parts.push(...banners(pu));
    const cards = [];
    if (pu.plan === "standard") {
      const fc = pu.free_credits;
      const days = fc.expires_at ? daysUntil(fc.expires_at) : null;
      cards.push(card("Free credits", money(fc.remaining),
        h("p", {class: "muted"}, `of ${money(fc.granted)} granted`),
        fc.expires_at ? h("p", {class: "muted"}, days > 0
          ? `expires in ${days} day${days === 1 ? "" : "s"}, ${localDate(fc.expires_at)}`
          : `expired ${localDate(fc.expires_at)}`) : null,
        Number(fc.lapsed) > 0 ? h("p", {class: "muted"}, `${money(fc.lapsed)} lapsed`) : null));
      // Every app balance that is not zero: below zero, a payment was given back after
      // the app spent from it, and the app owes that much before it runs again.
      const perApp = pu.apps.filter(a => Number(a.paid_balance) !== 0);
      cards.push(card("Paid balance", money(pu.paid_balance),
        h("p", {class: "muted"}, `shared pool ${money(pu.shared_pool)}`),
        perApp.length ? h("ul", {class: "muted"}, perApp.map(a => Number(a.paid_balance) < 0
          ? h("li", {class: "owed"}, `${a.name}: ${money(a.paid_balance)} (owed after a refund or dispute)`)
          : h("li", {}, `${a.name}: ${money(a.paid_balance)}`))) : null));
      cards.push(card("Usable balance", money(pu.usable_balance),
        h("p", {class: "muted"}, `low-balance alert under ${money(pu.low_balance_threshold)}`),
        ws.role === "owner" ? thresholdForm(ws, pu) : null));
      cards.push(card("Allowed", `${num(pu.allowed_sessions)} sessions`,
        h("p", {class: "muted"}, `or ${num(pu.allowed_requests)} requests at ${money(pu.session_price)} / ${money(pu.request_price)}`)));
      parts.push(h("div", {class: "cards"}, cards));
      const f = pu.forecast;
      parts.push(h("h2", {}, "Forecast"), h("p", {id: "forecast"}, f && f.runs_out_at
        ? `At the last ${f.window_days} days' rate (${money(f.daily_rate)} a day), credits run out on ${localDate(f.runs_out_at)} (in about ${num(f.days_left)} days).`
        : `Nothing was spent in the last ${f ? f.window_days : 7} days: no run-out date to forecast.`));
    } else {
      parts.push(h("div", {class: "cards"},
        card("Plan", "Enterprise", h("p", {class: "muted"}, `renewal ${localDate(pu.subscription.renewal_due)}`)),
        card("Licensed products", num(pu.licences.length))));
      parts.push(h("h2", {}, "Licences"), table([
        {label: "Product", value: l => humanize(l.product)},
        {label: "Limit", num: true, value: l => num(l.usage_limit)},
        {label: "Used", num: true, value: l => num(l.used)},
        {label: "Remaining", num: true, value: l => num(l.remaining)},
        {label: "Per minute", num: true, value: l => num(l.per_minute)},
        {label: "Per hour", num: true, value: l => num(l.per_hour)},
        {label: "Period", value: l => l.period},
        {label: "Renewal", value: () => localDate(pu.subscription.renewal_due)},
      ], pu.licences, "Licences per product"));
    }
    parts.push(h("h2", {}, "Apps"), appStatusTable(ws, pu));
  }
  parts.push(h("h2", {}, "Sessions, last 30 days"));
  const chart = h("div", {class: "chart-box"}, h("p", {class: "loading"}, "Loading the chart…"));
  parts.push(chart);
  setMain(...parts);
  await drawChart(chart, ws.id, {metric: "sessions", granularity: "day", by: "total"});
}

function appStatusTable(ws, pu) {
  if (!pu.apps.length) return h("p", {}, "No apps yet.");
  const shared = pu.usable_balance;
  return table([
    {label: "App", value: a => h("a", {href: `#/ws/${ws.id}/app/${a.id}`}, a.name)},
    {label: "Status", value: a => [badge(a.status, a.status), a.status_reason ? ` ${humanize(a.status_reason)}` : ""]},
    {label: pu.plan === "standard" ? "Remaining" : "Allowed units", num: true,
      value: a => pu.plan !== "standard" ? num(a.allowed_units)
        : (a.remaining !== shared ? money(a.remaining) : "shared")},
    {label: "Unit", value: a => `${a.unit} · ${money(a.unit_price)}`},
  ], pu.apps, "App statuses");
}

// --------------------------------------------------------------------- charts

async function drawChart(box, wsId, params) {
  const q = new URLSearchParams({ws: wsId, ...params});
  try {
    const data = await api("GET", `/ui/api/usage-chart?${q}`);
    const legend = h("ul", {class: "legend"}, data.series.map((s, i) => h("li", {},
      h("span", {class: `swatch c${i % 8}`, "aria-hidden": "true"}), `${s.label}: `,
      data.money ? money(amountOf(s.total)) : num(s.total))));
    const svgHolder = h("div", {});
    svgHolder.innerHTML = data.svg;  // rendered by the server from numbers only
    const rows = data.periods.map((p, i) => ({p, values: data.series.map(s => s.values[i])}));
    const tbl = table([{label: "Period (UTC)", value: r => r.p.slice(0, 16).replace("T", " ")},
      ...data.series.map((s, j) => ({label: s.label, num: true,
        value: r => data.money ? money(amountOf(r.values[j])) : num(r.values[j])}))],
      rows, "Chart data");
    const csv = h("a", {href: `/ui/api/usage-chart?${new URLSearchParams({...Object.fromEntries(q), format: "csv"})}`,
      download: ""}, "Download CSV of this chart");
    box.replaceChildren(...[
      data.live ? null : h("p", {class: "banner info"}, "Live figures unavailable: showing stored usage."),
      svgHolder, legend, h("p", {}, csv),
      h("details", {}, h("summary", {}, "Show the numbers"), tbl)].filter(Boolean));
    for (const [i, el] of [...legend.querySelectorAll(".swatch")].entries()) el.style.background = PALETTE[i % 8];
  } catch (e) {
    if (e.status === 401) throw e;
    box.replaceChildren(errorBox(e, () => drawChart(box, wsId, params)));
  }
}

const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8a7a00", "#666666"];

async function usagePage(ws) {
  loading("usage");
  let apps = await allPages(`/v1/workspaces/${ws.id}/apps`, "apps");
  if (ws.role === "member") {
    apps = apps.filter(a => a.role === "owner");
    if (!apps.length) {
      setMain(h("h1", {}, "Usage"), h("p", {}, "Usage is shown to the workspace owner, and to app owners for their own apps. You own no app here yet."));
      return;
    }
  }
  const field = (label, el) => h("label", {}, label, el);
  const range = h("select", {id: "u-range", name: "range"},
    [["1", "Last 24 hours"], ["7", "Last 7 days"], ["30", "Last 30 days"], ["90", "Last 90 days"], ["365", "Last 12 months"]]
      .map(([v, t]) => h("option", {value: v, selected: v === "30"}, t)));
  const gran = h("select", {id: "u-gran", name: "granularity"},
    ["hour", "day", "week", "month"].map(g => h("option", {value: g, selected: g === "day"}, g)));
  const metric = h("select", {id: "u-metric", name: "metric"},
    [["sessions", "Sessions"], ["requests", "Requests"], ["notifications", "Notifications"],
      ["messages", "Messages"], ["amount", "Amount charged"], ["refused", "Refusals by reason"]]
      .map(([v, t]) => h("option", {value: v}, t)));
  const by = h("select", {id: "u-by", name: "by"},
    [["total", "Total"], ["app", "By app"], ["channel", "By channel"]].map(([v, t]) => h("option", {value: v}, t)));
  const app = h("select", {id: "u-app", name: "app_id"}, h("option", {value: ""}, ws.role === "member" ? "All my apps" : "All apps"),
    apps.map(a => h("option", {value: a.id}, a.name)));
  const channel = h("input", {id: "u-channel", name: "channel", placeholder: "any", size: "10",
    pattern: "[a-z0-9][a-z0-9_\\-]{0,31}"});
  const chart = h("div", {class: "chart-box", id: "usage-chart"});
  const draw = async () => {
    const days = Number(range.value);
    const to = new Date();
    const from = new Date(to.getTime() - days * 86400000);
    if (gran.value === "hour" && days > 62) gran.value = "day";
    const params = {from: from.toISOString(), to: to.toISOString(), granularity: gran.value,
      metric: metric.value, by: by.value};
    if (app.value) params.app_id = app.value;
    if (channel.value.trim()) params.channel = channel.value.trim();
    chart.replaceChildren(h("p", {class: "loading"}, "Loading the chart…"));
    await drawChart(chart, ws.id, params);
  };
  const form = h("form", {class: "controls", onsubmit: (ev) => { ev.preventDefault(); draw(); }},
    field("Range", range), field("Granularity", gran), field("Show", metric), field("Split", by),
    field("App", app), field("Channel", channel), h("button", {type: "submit"}, "Update"));
  setMain(h("h1", {}, "Usage"), form, chart);
  await draw();
}

// ----------------------------------------------------------------------- apps

async function appsPage(ws) {
  loading("apps");
  const apps = await allPages(`/v1/workspaces/${ws.id}/apps`, "apps");
  const owner = ws.role === "owner" || ws.role === "operator";
  let pu = null;
  if (owner) {
    try { pu = await api("GET", `/v1/workspaces/${ws.id}/plan-usage`); } catch (e) { if (e.status === 401) throw e; }
  }
  const status = Object.fromEntries(((pu && pu.apps) || []).map(a => [a.id, a]));
  if (!apps.length) {
    setMain(h("h1", {}, "Apps"), h("p", {}, "No apps in this workspace yet."));
    return;
  }
  const canSpark = a => owner || a.role === "owner";
  const opens = a => a.role !== "member";  // a plain member may list apps, not open them
  const cols = [
    {label: "App", value: a => opens(a) ? h("a", {href: `#/ws/${ws.id}/app/${a.id}`}, a.name) : a.name},
    {label: "Product", value: a => humanize(a.product)},
    {label: "Your role", value: a => humanize(a.role)},
  ];
  if (pu) {
    cols.push({label: "Status", value: a => status[a.id]
      ? [badge(status[a.id].status, status[a.id].status), status[a.id].status_reason ? ` ${humanize(status[a.id].status_reason)}` : ""] : "—"});
    if (pu.plan === "standard") {
      cols.push({label: "Remaining", num: true, value: a => !status[a.id] ? "—"
        : status[a.id].remaining !== pu.usable_balance ? money(status[a.id].remaining) : "shared"});
    }
  } else if (owner) {
    cols.push({label: "Status", value: () => "live status unavailable"});
  }
  cols.push({label: "Sessions, 14 days", value: a => canSpark(a) ? h("span", {class: "spark-slot", "data-app": a.id}, "…") : "—"});
  setMain(h("h1", {}, "Apps"), table(cols, apps, "Apps"));
  const to = new Date();
  const from = new Date(to.getTime() - 14 * 86400000);
  await Promise.all([...main().querySelectorAll(".spark-slot")].map(async slot => {
    const q = new URLSearchParams({ws: ws.id, app_id: slot.dataset.app, metric: "sessions",
      granularity: "day", size: "spark", from: from.toISOString(), to: to.toISOString()});
    try {
      const data = await api("GET", `/ui/api/usage-chart?${q}`);
      slot.innerHTML = data.svg;
      slot.append(h("span", {class: "visually-hidden"}, ` ${num(data.series.reduce((t, s) => t + s.total, 0))} sessions`));
    } catch (e) { slot.textContent = "—"; }
  }));
}

async function appPage(ws, appId) {
  loading("the app");
  const app = await api("GET", `/v1/apps/${appId}`);
  const listed = (await allPages(`/v1/workspaces/${ws.id}/apps`, "apps")).find(a => a.id === appId);
  const role = listed ? listed.role : "collaborator";
  const manager = role === "owner" || role === "workspace_owner";
  const seesUsage = ws.role === "owner" || role === "owner" || ws.role === "operator";
  const u = app.usage;
  const parts = [
    h("h1", {}, app.name, " ", app.suspended ? badge("suspended", "bad") : null),
    h("p", {class: "muted"}, `${humanize(app.product)} · id ${app.id} · your role: ${humanize(role)}`),
    h("div", {class: "cards"},
      card("Sessions, 30 days", num(u.sessions)),
      card("Messages, 30 days", num(u.messages)),
      card("Requests, 30 days", num(u.requests)),
      card("Notifications, 30 days", num(u.notifications))),
    u.live ? null : h("p", {class: "banner info"}, "Live figures unavailable: stored counts only."),
    h("h2", {}, "Settings"),
    table([{label: "Setting", value: r => r[0]}, {label: "Value", value: r => r[1]}], [
      ["Upstream URL", app.upstream_url || "—"],
      ["Uses free credits", app.use_free_credits ? "yes" : "no"],
      ["Suspended", app.suspended ? "yes" : "no"],
      ["Created", localDate(app.created_at)],
    ], "App settings"),
  ];
  const sessionsBox = h("div", {id: "sessions"});
  if (seesUsage) parts.push(h("h2", {}, "Sessions"), sessionsBox);
  const collabBox = h("div", {id: "collaborators"});
  if (manager) parts.push(h("h2", {}, "Collaborators"), collabBox);
  setMain(...parts);
  if (seesUsage) await sessionsList(ws, appId, sessionsBox);
  if (manager) await collaborators(appId, collabBox);
}

async function sessionsList(ws, appId, box) {
  const base = `/v1/workspaces/${ws.id}/sessions?app_id=${appId}&order=desc`;
  const rows = [];
  let cursor = null;
  const body = h("div", {});
  const more = h("button", {type: "button", class: "secondary", onclick: () => load()}, "Load more");
  const csv = h("button", {type: "button", class: "secondary", onclick: async () => {
    const text = await api("GET", base.replace("&order=desc", ""), undefined, {accept: "text/csv"});
    downloadText(text, `sessions-${appId}.csv`, "text/csv");
  }}, "Download CSV");
  box.replaceChildren(body, h("div", {class: "actions"}, more, csv));
  async function load() {
    more.disabled = true;
    const page = await api("GET", `${base}&limit=20` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    rows.push(...page.sessions);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    more.disabled = false;
    body.replaceChildren(...[
      page.live ? null : h("p", {class: "banner info"}, "Live sessions unavailable: stored sessions only."),
      rows.length ? table([
        {label: "Started", value: s => localDateTime(s.start)},
        {label: "Channel", value: s => s.channel},
        {label: "User", value: s => s.channel_user},
        {label: "Messages", num: true, value: s => num(s.messages)},
        {label: "Amount", num: true, value: s => money(s.amount)},
        {label: "State", value: s => s.open ? badge("open", "open") : "closed"},
      ], rows, "Billing sessions") : h("p", {}, "No sessions in the last 30 days.")].filter(Boolean));
  }
  await load();
}

async function collaborators(appId, box) {
  const list = await allPages(`/v1/apps/${appId}/collaborators`, "collaborators");
  const roles = ["developer", "tester", "viewer"];
  const roleSelect = (id, value) => h("select", {id, name: "role"}, roles.map(r => h("option", {value: r, selected: r === value}, r)));
  const err = h("p", {class: "error", role: "alert"});
  const refresh = () => collaborators(appId, box);
  const act = async (fn) => {
    err.textContent = "";
    try { await fn(); await refresh(); } catch (e) { err.textContent = e.message; }
  };
  const userInput = h("input", {id: "c-user", name: "user_id", required: true, size: "16"});
  const add = h("form", {class: "inline", onsubmit: (ev) => { ev.preventDefault();
    act(() => api("POST", `/v1/apps/${appId}/collaborators`, {user_id: userInput.value.trim(), role: newRole.value})); }},
    h("label", {for: "c-user"}, "User id", userInput));
  const newRole = roleSelect("c-role", "developer");
  add.append(h("label", {for: "c-role"}, "Role", newRole), h("button", {type: "submit"}, "Invite"));
  box.replaceChildren(
    list.length ? table([
      {label: "Name", value: c => c.status === "invited" ? [c.user_id, " ", badge("invited", "open")] : `${c.name} (${c.email})`},
      {label: "Role", value: c => {
        const sel = roleSelect(`role-${c.user_id}`, c.role);
        sel.setAttribute("aria-label", `Role of ${c.name || c.user_id}`);
        sel.addEventListener("change", () => act(() => api("POST", `/v1/apps/${appId}/collaborators`, {user_id: c.user_id, role: sel.value})));
        return sel;
      }},
      {label: "Actions", value: c => h("button", {type: "button", class: "danger", onclick: () => {
        const what = c.status === "invited" ? `Withdraw the invitation of ${c.user_id}?` : `Remove ${c.name} from this app?`;
        if (confirm(what)) act(() => api("DELETE", `/v1/apps/${appId}/collaborators/${c.user_id}`));
      }}, c.status === "invited" ? "Withdraw" : "Remove")},
    ], list, "Collaborators") : h("p", {}, "No collaborators yet."),
    add, err);
}

// -------------------------------------------------------------------- billing

async function billing(ws) {
  loading("billing");
  const parts = [h("h1", {}, "Billing")];
  let pu = null;
  try { pu = await api("GET", `/v1/workspaces/${ws.id}/plan-usage`); } catch (e) {
    if (e.status === 401) throw e;
    parts.push(h("div", {class: "banner bad", role: "alert"}, "Live balances are unavailable right now."));
  }
  if (pu && pu.plan === "standard") {
    parts.push(h("p", {}, `Usable balance ${money(pu.usable_balance)} · paid ${money(pu.paid_balance)} · free ${money(pu.free_credits.remaining)}`));
  }
  // Add funds: the provider's checkout (where this server offers it).
  if (ws.type === "standard") {
    parts.push(h("h2", {}, "Add funds"));
    if (has("POST", "/v1/workspaces/{ws}/checkout")) {
      const min = money(amountOf(state.me.topup.min));
      const max = money(amountOf(state.me.topup.max));
      const amount = h("input", {id: "f-amount", name: "amount", inputmode: "decimal", required: true,
        pattern: "[0-9]+(\\.[0-9]{1,2})?", size: "10", "aria-describedby": "f-bounds"});
      const apps = pu ? pu.apps : [];
      const target = h("select", {id: "f-app", name: "app_id"}, h("option", {value: ""}, "Shared pool"),
        apps.map(a => h("option", {value: a.id}, a.name)));
      const err = h("p", {class: "error", role: "alert"});
      parts.push(h("form", {class: "inline", onsubmit: async (ev) => {
        ev.preventDefault();
        err.textContent = "";
        const body = {amount: amount.value.trim()};
        if (target.value) body.app_id = target.value;
        try {
          const out = await api("POST", `/v1/workspaces/${ws.id}/checkout`, body);
          location.assign(out.url);
        } catch (e) { err.textContent = e.message; }
      }},
        h("label", {for: "f-amount"}, "Amount (USD)", amount),
        h("label", {for: "f-app"}, "For", target),
        h("button", {type: "submit"}, "Continue to payment")),
        h("p", {id: "f-bounds", class: "muted"}, `Between ${min} and ${max} per payment.`), err);
    } else {
      parts.push(h("p", {}, "Online payment is not available on this server; contact support to add funds."));
    }
  }
  // History.
  parts.push(h("h2", {}, "History"));
  let loadHistory = null;
  if (has("GET", "/v1/workspaces/{ws}/transactions")) {
    const history = h("div", {id: "history"}, h("p", {class: "loading"}, "Loading the history…"));
    parts.push(history);
    const rows = [];
    let cursor = null;
    const more = h("button", {type: "button", class: "secondary", onclick: () => loadHistory()}, "Older entries");
    loadHistory = async () => {
      more.disabled = true;
      try {
        const page = await api("GET", `/v1/workspaces/${ws.id}/transactions` + (cursor ? `?cursor=${encodeURIComponent(cursor)}` : ""));
        rows.push(...page.transactions);
        cursor = page.next_cursor;
        history.replaceChildren(rows.length ? table([
          {label: "Date", value: t => localDateTime(t.created_at)},
          {label: "Type", value: t => humanize(t.type)},
          {label: "Amount", num: true, value: t => money(t.amount)},
          {label: "Pool", value: t => t.pool === "free" ? "free credits" : (t.app_id ? `app ${t.app_id}` : "shared pool")},
          {label: "Reference", value: t => t.reference},
        ], rows, "Billing history") : h("p", {}, "No transactions yet."), cursor ? more : "");
      } catch (e) {
        if (e.status === 401) throw e;
        history.replaceChildren(errorBox(e, loadHistory));
      } finally {
        more.disabled = false;
      }
    };
  } else {
    parts.push(h("p", {}, "Billing history is not available on this server yet."));
  }
  // Enterprise upgrade.
  parts.push(h("h2", {}, "Enterprise upgrade"));
  const reqs = await allPages(`/v1/workspaces/${ws.id}/upgrade-requests`, "requests");
  if (ws.type === "standard") {
    const products = ["automation", "search", "contact_center", "agent"];
    const boxes = products.map(p => h("label", {class: "check"},
      h("input", {type: "checkbox", name: "products", value: p}), humanize(p)));
    const message = h("textarea", {id: "r-message", name: "message", rows: "2", maxlength: "2000"});
    const err = h("p", {class: "error", role: "alert"});
    parts.push(h("form", {class: "inline", id: "upgrade-form", onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const chosen = boxes.map(b => b.querySelector("input")).filter(i => i.checked).map(i => i.value);
      const body = {products: chosen};
      if (message.value.trim()) body.message = message.value.trim();
      try {
        await api("POST", `/v1/workspaces/${ws.id}/upgrade-requests`, body);
        await billing(ws);
      } catch (e) { err.textContent = e.message; }
    }},
      h("fieldset", {}, h("legend", {}, "Products"), boxes),
      h("label", {for: "r-message"}, "Message (optional)", message),
      h("button", {type: "submit"}, "Request upgrade")), err);
  }
  parts.push(reqs.length ? table([
    {label: "Requested", value: r => localDate(r.created_at)},
    {label: "Products", value: r => r.products.map(humanize).join(", ")},
    {label: "Status", value: r => badge(r.status, r.status)},
    {label: "Note", value: r => r.reason || r.message || "—"},
  ], reqs, "Upgrade requests") : h("p", {}, "No upgrade requests."));
  setMain(...parts);
  if (loadHistory) await loadHistory();
}

// ----------------------------------------------------------------------- team

async function team(ws) {
  loading("the team");
  const members = await allPages(`/v1/workspaces/${ws.id}/members`, "members");
  const err = h("p", {class: "error", role: "alert"});
  const act = async (fn) => {
    err.textContent = "";
    try { await fn(); await team(ws); } catch (e) { err.textContent = e.message; }
  };
  const user = h("input", {id: "m-user", name: "user_id", required: true, size: "16"});
  setMain(h("h1", {}, "Team"),
    table([
      {label: "Name", value: m => m.name || "—"},
      {label: "Email", value: m => m.email || "—"},
      {label: "User id", value: m => m.user_id},
      {label: "Role", value: m => m.status === "invited" ? badge("invited", "open") : humanize(m.role)},
      {label: "Actions", value: m => m.role === "owner" ? "—" : h("button", {type: "button", class: "danger",
        onclick: () => {
          const what = m.status === "invited" ? `Withdraw the invitation of ${m.user_id}?` : `Remove ${m.name} from the workspace?`;
          if (confirm(what)) act(() => api("DELETE", `/v1/workspaces/${ws.id}/members/${m.user_id}`));
        }},
        m.status === "invited" ? "Withdraw" : "Remove")},
    ], members, "Members"),
    h("h2", {}, "Invite a member"),
    h("form", {class: "inline", onsubmit: (ev) => { ev.preventDefault();
      act(() => api("POST", `/v1/workspaces/${ws.id}/members`, {user_id: user.value.trim()})); }},
      h("label", {for: "m-user"}, "User id", user), h("button", {type: "submit"}, "Invite member")),
    err,
    h("p", {class: "muted"}, "An invited user joins when they accept; until then they see nothing " +
      "of this workspace and you see only their user id. Collaborators are managed on each app's page."));
}

// ---------------------------------------------------------------- invitations

/* One page at a time ("Load more"): a user may hold many invitations, and each is
   tenant-written text, so nothing is fetched that the user did not ask to see. Names are
   isolated (<bdi>) so that one cannot reorder the text around it. */
async function invitationsPage() {
  loading("your invitations");
  const first = await api("GET", "/v1/invitations?limit=50");
  const err = h("p", {class: "error", role: "alert"});
  const answer = async (inv, verb) => {
    err.textContent = "";
    try {
      await api("POST", `/v1/invitations/${inv.id}/${verb}`);
      state.workspaces = await allPages("/v1/workspaces", "workspaces");
      await invitationsPage();
      renderSwitcher((state.current || state.workspaces[0] || {}).id);
    } catch (e) { if (e.status !== 401) err.textContent = e.message; }
  };
  const columns = [
    {label: "To", value: i => i.kind === "app"
      ? [h("bdi", {}, i.app_name), " (app in ", h("bdi", {}, i.workspace_name), ")"]
      : h("bdi", {}, i.workspace_name)},
    {label: "Role", value: i => i.kind === "app" ? humanize(i.role) : "member"},
    {label: "Invited by", value: i => i.inviter_email
      ? [h("bdi", {}, i.inviter_name), " <", h("bdi", {}, i.inviter_email), "> (", i.invited_by, ")"]
      : i.invited_by},
    {label: "Sent", value: i => localDate(i.created_at)},
    {label: "Actions", value: i => [
      h("button", {type: "button", onclick: () => answer(i, "accept")}, "Accept"), " ",
      h("button", {type: "button", class: "secondary", onclick: () => answer(i, "decline")}, "Decline")]},
  ];
  const shown = table(columns, first.invitations, "Invitations");
  let cursor = first.next_cursor;
  const more = h("button", {type: "button", class: "secondary", hidden: !cursor, onclick: async () => {
    err.textContent = "";
    try {
      const page = await api("GET", `/v1/invitations?limit=50&cursor=${encodeURIComponent(cursor)}`);
      shown.tBodies[0].append(...table(columns, page.invitations).tBodies[0].children);
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (e) { if (e.status !== 401) err.textContent = e.message; }
  }}, "Load more");
  setMain(h("h1", {}, "Invitations"),
    ...(first.invitations.length ? [shown, more] : [h("p", {}, "No pending invitations.")]),
    err,
    h("p", {class: "muted"}, "Nobody sees your name or email in a workspace or app before you accept. " +
      "An invitation not answered in time expires."));
}

// --------------------------------------------------------------------- tokens

async function tokensPage() {
  loading("your API tokens");
  const list = await allPages("/v1/tokens", "tokens");
  const err = h("p", {class: "error", role: "alert"});
  const shown = h("div", {id: "new-token"});
  const name = h("input", {id: "t-name", name: "name", required: true, maxlength: "100"});
  const render = () => setMain(h("h1", {}, "API tokens"),
    shown,
    table([
      {label: "Name", value: t => [t.name, t.current ? " " : "", t.current ? badge("this session", "good") : ""]},
      {label: "Token", value: t => `${t.prefix}…${t.hint || "????"}`},
      {label: "Created", value: t => localDate(t.created_at)},
      {label: "Actions", value: t => h("button", {type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Revoke the token “${t.name}”? Anything using it stops working at once.`)) return;
        try {
          await api("DELETE", `/v1/tokens/${t.id}`);
          if (t.current) { await signOut(); return; }
          await tokensPage();
        } catch (e) { if (e.status !== 401) err.textContent = e.message; }
      }}, "Revoke")},
    ], list, "API tokens"),
    h("h2", {}, "Create a token"),
    h("form", {class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      try {
        const made = await api("POST", "/v1/tokens", {name: name.value.trim()});
        list.push(made);
        name.value = "";
        const field = h("input", {id: "t-secret", readonly: true, value: made.token, "aria-describedby": "t-once"});
        render();
        shown.replaceChildren(h("div", {class: "banner info", role: "status"},
          h("label", {for: "t-secret"}, `New token “${made.name}”`),
          h("div", {class: "secret"}, field, h("button", {type: "button", class: "secondary", onclick: () => {
            field.select();
            if (navigator.clipboard) navigator.clipboard.writeText(made.token).catch(() => {});
          }}, "Copy")),
          h("p", {id: "t-once", class: "muted"}, "Copy it now: it is shown only once.")));
      } catch (e) { err.textContent = e.message; }
    }}, h("label", {for: "t-name"}, "Name", name), h("button", {type: "submit"}, "Create token")),
    err);
  render();
}

// ---------------------------------------------------------------------- start

async function start() {
  document.getElementById("who-name").textContent = `${state.me.user.name} (${state.me.user.email})`;
  document.getElementById("who").hidden = false;
  for (const [id, key] of [["link-docs", "docs"], ["link-community", "community"], ["link-support", "support"]]) {
    document.getElementById(id).href = state.me.links[key];
  }
  loading("your workspaces");
  try {
    const doc = await api("GET", "/v1/openapi.json");
    state.routes = new Set(Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map(m => `${m.toUpperCase()} ${p}`)));
    state.workspaces = await allPages("/v1/workspaces", "workspaces");
  } catch (e) {
    if (e.status !== 401) setMain(errorBox(e, start));
    return;
  }
  await route();
}

async function boot() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("ws-select").addEventListener("change", (ev) => {
    const ws = state.workspaces.find(w => w.id === ev.target.value);
    location.hash = `#/ws/${ws.id}/${pagesFor(ws)[0][0]}`;
  });
  window.addEventListener("hashchange", route);
  try {
    const me = await api("GET", "/ui/session");
    if (!me.signed_in) { showSignIn(""); return; }
    state.me = me;
  } catch (e) {
    setMain(errorBox(e, boot));
    return;
  }
  await start();
}

document.addEventListener("DOMContentLoaded", boot);
