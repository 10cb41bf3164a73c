// Plan-and-usage dashboard: calls the admin API with the token the user pastes.
// Values are only ever inserted as text (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);

function pick(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj);
}

async function api(path, token) {
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new Error(`${resp.status} ${body.title || resp.statusText}: ${body.detail || ""}`);
  }
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text == null ? "—" : String(text);
  if (cls) td.className = cls;
}

function showPlan(plan) {
  for (const el of document.querySelectorAll("#plan [data-f]")) {
    const v = pick(plan, el.dataset.f);
    el.textContent = v == null ? "—" : String(v);
  }
  const body = $("apps").tBodies[0];
  body.replaceChildren();
  for (const app of plan.apps) {
    const row = body.insertRow();
    cell(row, app.name);
    cell(row, app.id);
    cell(row, app.owner_id);
    cell(row, app.product);
    cell(row, app.status.replaceAll("_", " "), "status-" + app.status);
    cell(row, app.remaining == null ? null : "$" + app.remaining);
  }
  $("plan").hidden = false;
}

function showUsage(usage) {
  const body = $("series").tBodies[0];
  body.replaceChildren();
  for (const p of [...usage.series, { ...usage.totals, start: "total" }]) {
    const row = body.insertRow();
    cell(row, p.start);
    cell(row, p.sessions);
    cell(row, p.requests);
    cell(row, p.notifications);
    cell(row, p.messages);
    cell(row, "$" + p.amount);
  }
  $("usage").hidden = false;
}

async function load(event) {
  if (event) event.preventDefault();
  const ws = $("ws").value.trim();
  const token = $("token").value.trim();
  sessionStorage.setItem("creditgate.ws", ws);
  $("error").hidden = true;
  $("error").textContent = "";
  const base = "/v1/workspaces/" + encodeURIComponent(ws);
  try {
    const plan = await api(base + "/plan-usage", token);
    showPlan(plan);
  } catch (err) {
    $("plan").hidden = true;
    $("error").textContent = "Plan: " + err.message;
    $("error").hidden = false;
  }
  try {
    const g = encodeURIComponent($("granularity").value);
    showUsage(await api(`${base}/usage?granularity=${g}`, token));
  } catch (err) {
    $("usage").hidden = true;
    $("error").textContent = ($("error").textContent + " Usage: " + err.message).trim();
    $("error").hidden = false;
  }
}

$("ws").value = sessionStorage.getItem("creditgate.ws") || "";
$("login").addEventListener("submit", load);
