// torpor console: polls /api/v1/console/* every POLL_MS and renders three pages (#/, #/fn/NAME,
// #/billing). Charts are uPlot (vendored); everything else is plain DOM built with textContent, so
// log lines and event messages are never parsed as HTML. When the server answers 401 the page asks
// for an API key (a form), keeps it in sessionStorage (this tab only) and sends it as a bearer
// token, like the CLI. A link may hand one over in its fragment, `#/?key=KEY` (never sent to the
// server): it is stored and removed from the address at once.
"use strict";

const POLL_MS = 2000;
const STATES = ["starting", "ready", "busy", "frozen", "draining"];
const page = document.getElementById("page");
const statusLine = document.getElementById("status");
let charts = {};
let timer = null;
let selectedLog = null;
const KEY_ITEM = "torpor-api-key";

class NeedsKey extends Error {}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function takeKeyFromHash() {
  const [path, query] = (location.hash || "#/").split("?");
  const params = new URLSearchParams(query || "");
  if (!params.has("key")) return;
  if (params.get("key")) sessionStorage.setItem(KEY_ITEM, params.get("key"));
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + path + (rest ? "?" + rest : ""));
}

function askForKey(message) {
  if (document.getElementById("key-form")) return;
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off",
    placeholder: "tp_…", "aria-label": "API key" });
  const form = h("form", { id: "key-form", onsubmit: (event) => {
    event.preventDefault();
    if (!input.value.trim()) return;
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    charts = {};
    page.replaceChildren();
    tick();
  } },
  h("h4", {}, "API key"), h("p", {}, message),
  h("p", {}, h("small", {}, "A key from `torpor keys create`, or the server's DATA_DIR/admin.key. " +
    "It is kept in this tab only (sessionStorage).")),
  input, h("button", { type: "submit" }, "Use this key"));
  page.replaceChildren(form);
}

async function api(path) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    let message = "this server needs an API key";
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    if (key) sessionStorage.removeItem(KEY_ITEM);
    throw new NeedsKey(message);
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

const json = async (path) => (await api(path)).json();
const ms = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0));
const secs = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));
const time = (t) => new Date(t * 1000).toLocaleTimeString();
const stateBadge = (state, n) => h("span", { class: "state " + state }, n === undefined ? state : `${state} ${n}`);

function stateBadges(counts) {
  const names = Object.keys(counts).filter((s) => counts[s] > 0);
  return names.length ? names.map((s) => stateBadge(s, counts[s])) : ["none"];
}

function table(headers, rows, id) {
  return h("table", { id, class: "striped" },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows));
}

// --- functions ----------------------------------------------------------------------------

async function renderFunctions() {
  const data = await json("/api/v1/console/overview");
  const rows = data.functions.map((f) => h("tr", { "data-function": f.name },
    h("td", {}, h("a", { href: "#/fn/" + encodeURIComponent(f.name) }, f.name)),
    h("td", { class: "num" }, f.revision),
    h("td", {}, stateBadge(f.status)),
    h("td", { class: "instance-states" }, stateBadges(f.instance_states)),
    h("td", { class: "num" }, f.rps.toFixed(2)),
    h("td", { class: "num" }, ms(f.p50_ms)),
    h("td", { class: "num" }, ms(f.p99_ms)),
    h("td", { class: "num" }, f.cold_starts_1h),
    h("td", { class: "num" }, f.cost_today),
    h("td", { class: "num" }, f.always_on_today)));
  page.replaceChildren(
    h("h2", {}, "Functions"),
    table(["name", "rev", "status", "instances", "req/s", "p50 ms", "p99 ms", "cold starts (1 h)",
      `cost today (${data.currency})`, `always-on (${data.currency})`], rows, "functions"),
    h("p", {}, h("small", {}, `node ${data.node} · today: ${data.cost_today} ${data.currency} ` +
      `against ${data.always_on_today} ${data.currency} always on`)));
}

// --- one function -----------------------------------------------------------------------

function lineChart(id, title, series, xs, ys) {
  const holder = document.getElementById(id);
  const points = ys.reduce((n, y) => n + y.filter((v) => v !== null).length, 0);
  holder.setAttribute("data-points", points);
  const width = Math.max(300, holder.clientWidth || 480);
  if (charts[id] && charts[id].root.isConnected) {
    charts[id].setData([xs, ...ys]);
    return;
  }
  holder.replaceChildren(h("h6", {}, title));
  const opts = {
    width, height: 180,
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: true }))],
    axes: [{}, { size: 60 }],
  };
  charts[id] = new uPlot(opts, [xs, ...ys], holder);
}

function timeline(data) {
  const span = data.now - data.since;
  const byInstance = new Map();
  for (const part of data.timeline) {
    if (!byInstance.has(part.instance)) byInstance.set(part.instance, []);
    byInstance.get(part.instance).push(part);
  }
  const rows = [...byInstance.entries()].map(([id, parts]) => h("div", { class: "row", title: id },
    h("span", { class: "label" }, id),
    parts.map((p) => {
      const left = ((p.start - data.since) / span) * 100;
      const right = (((p.end === null ? data.now : p.end) - data.since) / span) * 100;
      return h("div", {
        class: "bar " + p.state, title: `${p.state} ${time(p.start)}–${p.end ? time(p.end) : "now"}`,
        style: `left:${left.toFixed(3)}%;width:${Math.max(0.2, right - left).toFixed(3)}%`,
      });
    })));
  return h("div", { id: "timeline", class: "timeline", "data-rows": rows.length },
    rows.length ? rows : h("small", {}, "no instance in this window"));
}

async function renderLog(name) {
  const holder = document.getElementById("log");
  if (!holder || !selectedLog) return;
  const params = new URLSearchParams({ instance: selectedLog, tail: "50" });
  const text = await (await api(`/api/v1/functions/${encodeURIComponent(name)}/logs?${params}`)).text();
  const lines = text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  holder.replaceChildren(h("h6", {}, `last lines of ${selectedLog}`),
    h("pre", { class: "log" }, lines.length ? lines.map((l) => `${l.stream === "stderr" ? "! " : ""}${l.line}\n`)
      : "(empty)"));
}

const WINDOWS = [["5 min", 300], ["15 min", 900], ["1 h", 3600], ["6 h", 21600], ["24 h", 86400]];
const windowLabel = (s) => (WINDOWS.find((w) => w[1] === s) || [`${s} s`])[0];

async function renderFunction(name, windowS) {
  const data = await json(`/api/v1/console/functions/${encodeURIComponent(name)}?window_s=${windowS}`);
  const f = data.function;
  const a = data.autoscaler;
  if (!document.getElementById("fn-" + name)) {
    charts = {};
    const link = (w) => h("a", { href: `#/fn/${encodeURIComponent(name)}?window_s=${w[1]}`,
      "aria-current": w[1] === windowS ? "page" : null }, w[0]);
    page.replaceChildren(h("div", { id: "fn-" + name },
      h("h2", {}, h("a", { href: "#/" }, "Functions"), " / ", f.name),
      h("p", {}, h("small", {}, "window: ", WINDOWS.map((w) => [link(w), " "]))),
      h("div", { id: "summary" }),
      h("div", { class: "grid2" },
        h("article", { class: "chart", id: "chart-rps" }), h("article", { class: "chart", id: "chart-latency" }),
        h("article", { class: "chart", id: "chart-queue" }), h("article", { class: "chart", id: "chart-scale" })),
      h("article", {}, h("h6", {}, `instance states, last ${windowLabel(windowS)}`), h("div", { id: "timeline-holder" })),
      h("h4", {}, "Instances"), h("div", { id: "instances" }),
      h("div", { class: "grid2" }, h("article", { id: "events" }), h("article", { id: "log" }))));
  }
  document.getElementById("summary").replaceChildren(h("p", {},
    stateBadge(f.status), ` revision ${f.revision} · ${f.kind} · ${f.rps.toFixed(2)} req/s · p50 ${ms(f.p50_ms)} ms · ` +
    `p99 ${ms(f.p99_ms)} ms · in flight ${f.in_flight} · queued ${f.queued}`),
  h("p", { id: "autoscaler" }, h("strong", {}, `desired ${a.desired} · ready ${a.ready} · provisioned ${a.provisioned}`),
    a.panic ? h("span", { class: "state failed" }, "panic") : null, ` ${a.reason}`,
    h("small", {}, ` (min ${a.min_instances}, max ${a.max_instances})`)));
  const s = data.series;
  const xs = s.map((p) => p.at);
  lineChart("chart-rps", "requests/s", [{ label: "req/s", color: "#2f6fd0" }, { label: "errors/s", color: "#c8443b" }],
    xs, [s.map((p) => p.rps), s.map((p) => p.errors / p.resolution_s)]);
  lineChart("chart-latency", "latency (ms)", [{ label: "p50", color: "#3c9a5f" }, { label: "p99", color: "#e8a33d" }],
    xs, [s.map((p) => (p.p50_s === null ? null : p.p50_s * 1000)), s.map((p) => (p.p99_s === null ? null : p.p99_s * 1000))]);
  lineChart("chart-queue", "queue depth and in flight", [{ label: "queued", color: "#c8443b" }, { label: "in flight", color: "#2f6fd0" }],
    xs, [s.map((p) => p.queued), s.map((p) => p.in_flight)]);
  lineChart("chart-scale", "desired vs ready instances", [{ label: "desired", color: "#9a7ab8" }, { label: "ready", color: "#3c9a5f" }, { label: "frozen", color: "#6fb7d9" }],
    xs, [s.map((p) => p.desired), s.map((p) => p.ready), s.map((p) => p.states.frozen || 0)]);
  document.getElementById("timeline-holder").replaceChildren(timeline(data));
  const rows = data.instances.map((i) => {
    const c = i.cold_start;
    const pieces = ["spawn_s", "fork_s", "load_s", "setup_s", "warmup_s", "initialize_s", "first_response_s"]
      .filter((k) => c[k] !== undefined && c[k] !== null).map((k) => `${k.replace("_s", "")} ${secs(c[k])}`);
    return h("tr", { "data-instance": i.id },
      h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); selectedLog = i.id; renderLog(name); } }, i.id)),
      h("td", {}, stateBadge(i.state), i.idle ? ` (${i.idle})` : ""),
      h("td", {}, i.node), h("td", {}, i.pool),
      h("td", {}, i.placement.device === "gpu" ? `gpu ×${i.placement.gpus} ${i.placement.gpu_memory_mb} MB` : `cpu ${i.placement.cpus}`),
      h("td", {}, i.provisioned ? "provisioned" : "on demand"),
      h("td", { class: "num" }, i.in_flight),
      h("td", { class: "num" }, secs(c.total_s)),
      h("td", {}, h("small", {}, `${c.mode}: ${pieces.join(" · ")}`)));
  });
  document.getElementById("instances").replaceChildren(rows.length
    ? table(["instance", "state", "node", "pool", "placement", "kind", "in flight", "cold start s", "breakdown"], rows, "instance-table")
    : h("p", {}, "no instances (scaled to zero)"));
  document.getElementById("events").replaceChildren(h("h6", {}, "recent events"),
    h("ul", {}, data.events.slice(0, 15).map((e) => h("li", {}, h("small", {}, `${time(e.at)} ${e.kind}: `), e.message))));
  if (!selectedLog && data.instances.length) selectedLog = data.instances[0].id;
  await renderLog(name);
}

// --- billing ---------------------------------------------------------------------------

async function renderBilling() {
  const data = await json("/api/v1/console/billing");
  const line = (key, l) => h("tr", { [`data-${key}`]: l[key] },
    h("td", {}, l[key]), h("td", { class: "num" }, l.active_seconds), h("td", { class: "num" }, l.idle_seconds),
    h("td", { class: "num" }, l.cost), h("td", { class: "num" }, l.always_on_cost),
    h("td", { class: "num" }, l.saving_pct === null ? "–" : `${l.saving_pct} %`));
  const headers = (what) => [what, "active s", "idle s", `cost ${data.currency}`, `always-on ${data.currency}`, "saving"];
  page.replaceChildren(h("h2", {}, "Billing"),
    h("p", {}, `since ${new Date(data.since_epoch_s * 1000).toISOString().replace(".000Z", " UTC")}: ` +
      `${data.cost} ${data.currency}, against ${data.always_on_cost} ${data.currency} for always-on ` +
      "hardware (kept on from each function's first record in the window)"),
    h("h4", {}, "per function"), table(headers("function"), data.functions.map((l) => line("function", l)), "billing-functions"),
    h("h4", {}, "per pool"), table(headers("pool"), data.pools.map((l) => line("pool", l)), "billing-pools"));
}

// --- routing and polling ----------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const bare = hash.split("?")[0];
  if (hash.startsWith("#/fn/")) {
    const [path, query] = hash.slice(5).split("?");
    const windowS = Number(new URLSearchParams(query || "").get("window_s")) || 3600;
    return () => renderFunction(decodeURIComponent(path), windowS);
  }
  if (bare === "#/billing") return renderBilling;
  return renderFunctions;
}

async function tick() {
  clearTimeout(timer);
  try {
    await route()();
    statusLine.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.setAttribute("data-loaded", "true");
  } catch (error) {
    if (error instanceof NeedsKey) {  // no polling until a key is given
      statusLine.textContent = "needs an API key";
      askForKey(error.message);
      return;
    }
    statusLine.textContent = "error: " + error.message;
  }
  timer = setTimeout(tick, POLL_MS);
}

window.addEventListener("hashchange", () => {
  takeKeyFromHash(); charts = {}; selectedLog = null; page.replaceChildren(); tick();
});
takeKeyFromHash();
tick();
