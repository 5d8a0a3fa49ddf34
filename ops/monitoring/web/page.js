// The dashboard page (ops/monitoring/page.py): panels from /config.json, data from
// Prometheus's HTTP API (/api/v1/query_range, /api/v1/rules) through the page's server.
// Every panel ends a refresh with data-state="ok" (a number or a line is shown),
// "empty" (the queries answered no data) or "error" (a query failed).
"use strict";

const COLORS = ["#2458b3", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];
const charts = {};  // panel id -> {plot, labels}

function fmt(v, unit) {
  if (v == null || !isFinite(v)) return "–";
  const num = (x, d) => x.toLocaleString("en", {maximumFractionDigits: d});
  switch (unit) {
    case "s": return v < 1 ? num(v * 1000, v < 0.01 ? 2 : 1) + " ms" : num(v, 2) + " s";
    case "percentunit": return num(v * 100, v > 0.99 && v < 1 ? 2 : 1) + "%";
    case "reqps": case "ops": return num(v, v < 10 ? 2 : 0) + "/s";
    case "bytes": return v >= 1073741824 ? num(v / 1073741824, 2) + " GiB" : num(v / 1048576, 0) + " MiB";
    default: return num(v, v < 10 ? 2 : 0);
  }
}

function legendOf(template, metric) {
  // A series without the labels the legend names ("... or vector(0)") is the total.
  return template.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, k) => metric[k] ?? "").trim() || "total";
}

async function api(path, params) {
  const resp = await fetch("/api/v1/" + path + "?" + new URLSearchParams(params));
  const body = await resp.json();
  if (body.status !== "success") throw new Error(body.error || resp.statusText);
  return body.data;
}

async function seriesOf(panel, cfg) {
  const end = Math.floor(Date.now() / 1000), start = end - cfg.range_s;
  const out = [];
  for (const e of panel.exprs) {
    const data = await api("query_range", {query: e.expr, start, end, step: cfg.step_s});
    for (const r of data.result) {
      out.push({label: legendOf(e.legend, r.metric),
                points: r.values.map(([t, v]) => [t, parseFloat(v)]).filter(([, v]) => isFinite(v))});
    }
  }
  return out.filter(s => s.points.length > 0);
}

function element(tag, cls, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text != null) el.textContent = text;
  return el;
}

function build(cfg) {
  document.getElementById("title").textContent = cfg.title;
  const main = document.getElementById("rows");
  for (const row of cfg.rows) {
    const section = element("section");
    section.appendChild(element("h2", null, row.title));
    const grid = element("div", "grid");
    for (const p of row.panels) {
      const div = element("div", "panel " + p.kind);
      div.dataset.id = p.id;
      div.dataset.state = "loading";
      div.title = p.description || "";
      const h3 = element("h3");
      h3.append(element("span", null, p.title), element("span", "value"));
      div.append(h3, element("div", "body"));
      grid.appendChild(div);
    }
    section.appendChild(grid);
    main.appendChild(section);
  }
}

function show(div, state, note) {
  div.dataset.state = state;
  const body = div.querySelector(".body");
  if (note != null) { body.replaceChildren(element("div", "note", note)); }
}

function drawChart(div, p, series) {
  // Align every series on the union of their timestamps (query_range steps line up).
  const ts = [...new Set(series.flatMap(s => s.points.map(([t]) => t)))].sort((a, b) => a - b);
  const index = new Map(ts.map((t, i) => [t, i]));
  const data = [ts, ...series.map(s => {
    const col = new Array(ts.length).fill(null);
    for (const [t, v] of s.points) col[index.get(t)] = v;
    return col;
  })];
  const labels = series.map(s => s.label).join("\u0000");
  const body = div.querySelector(".body");
  let entry = charts[p.id];
  if (entry && entry.labels === labels) { entry.plot.setData(data); return; }
  if (entry) entry.plot.destroy();
  body.replaceChildren();
  const opts = {
    width: Math.max(200, body.clientWidth || div.clientWidth - 16), height: 150,
    legend: {show: true, live: false},
    scales: {x: {time: true}},
    axes: [{}, {size: 74, values: (u, vals) => vals.map(v => fmt(v, p.unit))}],
    series: [{}, ...series.map((s, i) => ({label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5,
                                           value: (u, v) => fmt(v, p.unit)}))],
  };
  charts[p.id] = {plot: new uPlot(opts, data, body), labels};
}

async function refreshPanel(p, cfg) {
  const div = document.querySelector(`.panel[data-id="${p.id}"]`);
  try {
    if (p.kind === "alerts") return refreshAlerts(div);
    const series = await seriesOf(p, cfg);
    const last = series.length ? series[0].points[series[0].points.length - 1][1] : null;
    // The latest value in the title when the panel has one line (the legend names several).
    div.querySelector(".value").textContent = series.length === 1 ? fmt(last, p.unit) : "";
    if (!series.length) { if (charts[p.id]) { charts[p.id].plot.destroy(); delete charts[p.id]; }
                          return show(div, "empty", "no data"); }
    if (p.kind === "stat") {
      div.querySelector(".body").replaceChildren(element("div", "big", fmt(last, p.unit)));
      return show(div, "ok");
    }
    drawChart(div, p, series);
    show(div, "ok");
  } catch (err) {
    show(div, "error", "query failed: " + err.message);
    throw err;
  }
}

async function refreshAlerts(div) {
  const data = await api("rules", {type: "alert"});
  const rules = data.groups.flatMap(g => g.rules);
  const order = {firing: 0, pending: 1, inactive: 2};
  rules.sort((a, b) => order[a.state] - order[b.state] || a.name.localeCompare(b.name));
  const firing = rules.filter(r => r.state === "firing").length;
  div.querySelector(".value").textContent = `${firing} firing`;
  const list = element("ul", "alerts");
  for (const r of rules) {
    const li = element("li", r.state, r.name);
    li.appendChild(element("span", "sev", `${r.labels.severity || ""} · ${r.state}`));
    li.title = (r.annotations && (r.annotations.summary || r.annotations.description)) || r.query;
    list.appendChild(li);
  }
  div.querySelector(".body").replaceChildren(list);
  show(div, rules.length ? "ok" : "empty", rules.length ? null : "no alert rules loaded");
}

async function refresh(cfg) {
  const status = document.getElementById("status");
  const panels = cfg.rows.flatMap(r => r.panels);
  const results = await Promise.allSettled(panels.map(p => refreshPanel(p, cfg)));
  const failed = results.filter(r => r.status === "rejected");
  status.className = failed.length ? "error" : "";
  status.textContent = (failed.length ? `${failed.length} queries failed (${failed[0].reason.message}); ` : "")
    + `updated ${new Date().toLocaleTimeString("en-GB")}, every ${cfg.refresh_s} s, last ${cfg.range_s / 60} min`;
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

(async () => {
  const cfg = await (await fetch("/config.json")).json();
  build(cfg);
  for (;;) {
    await refresh(cfg);
    await new Promise(resolve => setTimeout(resolve, cfg.refresh_s * 1000));
  }
})();
