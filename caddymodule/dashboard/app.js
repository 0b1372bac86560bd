// Model Router dashboard: polls the admin API's JSON endpoints (same origin)
// every two seconds and draws plain SVG charts. No third-party code.
"use strict";

const base = location.pathname.replace(/\/dashboard\/?(index\.html)?$/, "");
const POLL_MS = 2000;
const COLORS = { p50: "#16a34a", p95: "#d97706", p99: "#dc2626", inflight: "#2563eb", capacity: "#9ca3af" };
let pool = new URLSearchParams(location.search).get("pool") || "";
let samples = [];
let lastSample = "";

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const ns = ["svg", "polyline", "line", "text", "rect"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.setAttribute("class", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function api(path, opts) {
  const sep = path.includes("?") ? "&" : "?";
  const url = base + "/" + path + (pool ? sep + "pool=" + encodeURIComponent(pool) : "");
  return fetch(url, Object.assign({ cache: "no-store" }, opts)).then(async (r) => {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || r.status + " " + r.statusText);
    return body;
  });
}

function ms(seconds) {
  if (!seconds) return "–";
  return seconds < 1 ? Math.round(seconds * 1000) + "ms" : seconds.toFixed(2) + "s";
}

function pct(x) { return Math.round(x * 100) + "%"; }

function renderBackends(data) {
  const tbody = $("#backends tbody");
  tbody.replaceChildren();
  for (const b of data.backends) {
    const bar = el("span", { class: "bar" }, el("span"));
    bar.firstChild.style.width = Math.min(100, Math.round(b.utilization * 100)) + "%";
    const btn = el("button", {
      class: b.drained ? "undrain" : "drain",
      "data-backend": b.name,
      onclick: () => toggleDrain(btn, b.name, !b.drained),
    }, b.drained ? "Undrain" : "Drain");
    let health = b.health.replace("_", " ");
    if (b.health_until) health += " until " + new Date(b.health_until).toLocaleTimeString();
    tbody.append(el("tr", { "data-backend": b.name },
      el("td", {}, el("strong", {}, b.name), el("div", { class: "muted" }, b.models.join(", "))),
      el("td", {}, el("span", { class: "badge " + b.health }, health)),
      el("td", { class: "num inflight" }, bar, b.inflight + " / " + b.capacity),
      el("td", { class: "num util" }, pct(b.utilization)),
      el("td", { class: "num" }, b.requests_1m),
      el("td", { class: "num" }, b.errors_1m + (b.requests_1m ? " (" + pct(b.error_rate_1m) + ")" : "")),
      el("td", { class: "num latency" }, [b.latency_seconds.p50, b.latency_seconds.p95, b.latency_seconds.p99].map(ms).join(" / ")),
      el("td", { class: "num" }, [b.ttft_seconds.p50, b.ttft_seconds.p95, b.ttft_seconds.p99].map(ms).join(" / ")),
      el("td", { class: "num" }, b.score.weight),
      el("td", {}, btn),
    ));
  }
  $("#summary").textContent = "strategy " + data.strategy + " · load state " + data.load_state;
}

async function toggleDrain(btn, name, drain) {
  btn.disabled = true;
  try {
    await api("backends/" + encodeURIComponent(name) + "/" + (drain ? "drain" : "undrain"), { method: "POST" });
    await refresh();
  } catch (e) {
    setStatus("drain failed: " + e.message, true);
  } finally {
    btn.disabled = false;
  }
}

function renderAlerts(data) {
  const ul = $("#alerts");
  ul.replaceChildren();
  const shown = data.alerts.filter((a) => a.state !== "ok");
  if (!shown.length) ul.append(el("li", { class: "muted" }, "none"));
  for (const a of shown) {
    ul.append(el("li", { class: a.state },
      el("strong", {}, a.state + " "), a.alert + (a.backend ? " · " + a.backend : "") + " — " + a.message,
      el("span", { class: "muted" }, "  since " + new Date(a.since).toLocaleTimeString())));
  }
}

function renderQueue(q) {
  $("#queue").textContent = q.depth + " waiting (of at most " + q.max + "), oldest " + ms(q.oldest_wait_seconds);
}

function renderReplicas(data) {
  const tbody = $("#replicas tbody");
  tbody.replaceChildren();
  for (const r of data.replicas) {
    tbody.append(el("tr", {},
      el("td", {}, r.id + (r.self ? " (this one)" : "")),
      el("td", {}, r.addr || ""),
      el("td", {}, r.last_beat ? new Date(r.last_beat).toLocaleTimeString() : "–")));
  }
}

function renderDecisions(data) {
  const tbody = $("#decisions tbody");
  tbody.replaceChildren();
  for (const d of data.decisions.slice(0, 10)) {
    tbody.append(el("tr", {},
      el("td", {}, new Date(d.at).toLocaleTimeString()),
      el("td", {}, d.model),
      el("td", {}, d.chosen || "–"),
      el("td", {}, d.outcome),
      el("td", { class: "muted" }, d.candidates.map((c) => c.backend + " " + c.score.toFixed(2) + (c.full ? " full" : "")).join(", "))));
  }
}

// chart draws series (arrays of [t, v]) in an SVG over the time span.
function chart(title, series, span, fmt) {
  const W = 400, H = 110, pad = 28;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
  if (max <= 0) max = 1;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  svg.append(el("line", { x1: pad, y1: H - 12, x2: W, y2: H - 12, stroke: "#e5e7eb" }));
  svg.append(el("text", { x: 0, y: 12, "font-size": 10, fill: "#6b7280" }, fmt(max)));
  svg.append(el("text", { x: 0, y: H - 14, "font-size": 10, fill: "#6b7280" }, fmt(0)));
  for (const s of series) {
    if (!s.points.length) continue;
    const pts = s.points.map(([t, v]) => {
      const x = pad + ((t - span[0]) / Math.max(1, span[1] - span[0])) * (W - pad);
      const y = H - 12 - (v / max) * (H - 24);
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
    svg.append(el("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 1.5 }));
  }
  const legend = el("div", { class: "legend" });
  for (const s of series) {
    const i = el("i");
    i.style.background = s.color;
    legend.append(i, s.name);
  }
  return el("div", { class: "chart" }, el("h3", {}, title), svg, legend);
}

function renderCharts() {
  const box = $("#charts");
  box.replaceChildren();
  if (!samples.length) {
    box.append(el("p", { class: "muted" }, "no samples yet"));
    return;
  }
  const span = [Date.parse(samples[0].at), Date.parse(samples[samples.length - 1].at)];
  const names = samples[samples.length - 1].backends.map((b) => b.name);
  for (const name of names) {
    const pick = (f) => samples.map((s) => {
      const b = s.backends.find((x) => x.name === name);
      return b ? [Date.parse(s.at), f(b)] : null;
    }).filter(Boolean);
    box.append(chart(name + " · in flight vs capacity", [
      { name: "in flight", color: COLORS.inflight, points: pick((b) => b.inflight) },
      { name: "capacity", color: COLORS.capacity, points: pick((b) => b.capacity) },
    ], span, (v) => String(Math.round(v))));
    box.append(chart(name + " · latency", [
      { name: "p50", color: COLORS.p50, points: pick((b) => b.p50) },
      { name: "p95", color: COLORS.p95, points: pick((b) => b.p95) },
      { name: "p99", color: COLORS.p99, points: pick((b) => b.p99) },
    ], span, ms));
    box.append(chart(name + " · time to first token", [
      { name: "p50", color: COLORS.p50, points: pick((b) => b.ttft_p50) },
      { name: "p95", color: COLORS.p95, points: pick((b) => b.ttft_p95) },
      { name: "p99", color: COLORS.p99, points: pick((b) => b.ttft_p99) },
    ], span, ms));
  }
}

function setStatus(text, bad) {
  const s = $("#status");
  s.textContent = text;
  s.style.color = bad ? "#b91c1c" : "";
}

async function loadPools() {
  const data = await fetch(base + "/pools", { cache: "no-store" }).then((r) => r.json());
  const sel = $("#pool");
  sel.replaceChildren(...data.pools.map((p) => el("option", { value: p }, p)));
  if (!pool && data.pools.length) pool = data.pools.includes("default") ? "default" : data.pools[0];
  sel.value = pool;
  sel.onchange = () => { pool = sel.value; samples = []; lastSample = ""; refresh(); };
}

async function refresh() {
  try {
    const [backends, alerts, queue, replicas, decisions, hist] = await Promise.all([
      api("backends"), api("alerts"), api("queue"), api("replicas"), api("decisions?limit=10"),
      api("history" + (lastSample ? "?since=" + encodeURIComponent(lastSample) : "")),
    ]);
    renderBackends(backends);
    renderAlerts(alerts);
    renderQueue(queue);
    renderReplicas(replicas);
    renderDecisions(decisions);
    samples = samples.concat(hist.samples).slice(-300);
    if (samples.length) lastSample = samples[samples.length - 1].at;
    renderCharts();
    document.body.dataset.loaded = "1";
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus("error: " + e.message, true);
  }
}

loadPools().then(refresh).catch((e) => setStatus("error: " + e.message, true));
setInterval(refresh, POLL_MS);
