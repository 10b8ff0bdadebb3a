// The malstrom dashboard: polls /api/state once a second and draws it. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return n.toFixed(digits === undefined ? 0 : digits);
}
function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}
function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function rows(tbody, data, cells) {
  tbody.replaceChildren(...data.map((d) => {
    const tr = document.createElement("tr");
    for (const c of cells(d)) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }));
}

// ----- job graph: operators in layers by their longest path from a source ---------------------
let graphKey = "";
function drawGraph(graph, ops) {
  const svg = $("graph");
  const key = JSON.stringify(graph);
  const byName = Object.fromEntries(ops.map((o) => [o.name, o]));
  if (key !== graphKey) {
    graphKey = key;
    const layer = {};
    const preds = {};
    for (const n of graph.nodes) preds[n.name] = [];
    for (const e of graph.edges) preds[e.to].push(e.from);
    const depth = (name, seen) => {
      if (layer[name] !== undefined) return layer[name];
      if (seen.has(name)) return 0;
      seen.add(name);
      const d = preds[name].length ? 1 + Math.max(...preds[name].map((p) => depth(p, seen))) : 0;
      layer[name] = d;
      return d;
    };
    graph.nodes.forEach((n) => depth(n.name, new Set()));
    const columns = {};
    graph.nodes.forEach((n) => (columns[layer[n.name]] ||= []).push(n));
    const ncol = Math.max(0, ...Object.keys(columns).map(Number)) + 1;
    const nrow = Math.max(1, ...Object.values(columns).map((c) => c.length));
    const W = 170, H = 62, GX = 70, GY = 22;
    const width = ncol * (W + GX), height = nrow * (H + GY) + 10;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.style.height = Math.min(480, Math.max(140, height)) + "px";
    svg.replaceChildren();
    const defs = el("defs", {});
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a94a6" }));
    defs.appendChild(marker);
    svg.appendChild(defs);
    const pos = {};
    for (const [c, nodes] of Object.entries(columns)) {
      const top = (height - nodes.length * (H + GY)) / 2;
      nodes.forEach((n, i) => (pos[n.name] = { x: Number(c) * (W + GX) + 10, y: top + i * (H + GY) + GY / 2 }));
    }
    for (const e of graph.edges) {
      const a = pos[e.from], b = pos[e.to];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
      const mx = (x1 + x2) / 2;
      svg.appendChild(el("path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}` }));
      svg.appendChild(el("text", { class: "edge-label", "data-from": e.from, "data-to": e.to,
        x: mx, y: (y1 + y2) / 2 - 4 }, ""));
    }
    for (const n of graph.nodes) {
      const p = pos[n.name];
      const g = el("g", { class: "node" + (n.root ? " root" : ""), "data-name": n.name,
        transform: `translate(${p.x},${p.y})` });
      g.appendChild(el("rect", { width: W, height: H }));
      g.appendChild(el("text", { x: W / 2, y: 18, class: "name" }, n.name));
      g.appendChild(el("text", { x: W / 2, y: 34, class: "kind" }, ""));
      g.appendChild(el("text", { x: W / 2, y: 52, class: "rate" }, ""));
      svg.appendChild(g);
    }
  }
  for (const g of svg.querySelectorAll(".node")) {
    const o = byName[g.dataset.name] || {};
    g.querySelector(".kind").textContent = o.kind || "";
    g.querySelector(".rate").textContent = fmt(o.rate) + " rec/s";
    g.dataset.records = o.root ? o.records_out : o.records_in;
  }
  for (const t of svg.querySelectorAll(".edge-label")) {
    const o = byName[t.dataset.from] || {};
    t.textContent = fmt(o.rate_out) + "/s";
  }
}

// ----- line plots on a canvas -------------------------------------------------------------------
function plot(canvas, points, color, unit) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 56, B = 18;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7485";
  const pts = points.filter((p) => p[1] !== null && p[1] !== undefined);
  if (pts.length < 2) { ctx.fillText("waiting for data…", L, H / 2); return; }
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0];
  const max = Math.max(...pts.map((p) => p[1])) * 1.1 || 1;
  ctx.strokeStyle = "#d8dde6";
  for (let i = 0; i <= 4; i++) {
    const y = (H - B) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W, y); ctx.stroke();
    ctx.fillText(fmt(max * i / 4, max < 10 ? 1 : 0) + unit, 2, Math.max(10, y - 2));
  }
  ctx.fillText(`last ${ago(t1 - t0)}`, L, H - 4);
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach((p, i) => {
    const x = L + (W - L) * (t1 > t0 ? (p[0] - t0) / (t1 - t0) : 1);
    const y = (H - B) * (1 - p[1] / max);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// ----- polling ----------------------------------------------------------------------------------
async function refresh() {
  let s;
  try {
    const r = await fetch("api/state", { cache: "no-store" });
    s = await r.json();
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = "cannot reach the job (it may have ended): " + e;
    return;
  }
  const st = s.status || {};
  $("job").textContent = s.job;
  $("phase").textContent = st.phase || "–";
  $("workers-count").textContent = (st.workers || s.workers).length;
  $("throughput").textContent = fmt(s.throughput);
  $("lag").textContent = s.lag === null ? "–" : s.lag.toFixed(2) + " s";
  $("last-snapshot").textContent = s.last_snapshot
    ? `v${s.last_snapshot.version}, ${ago(s.last_snapshot.age)} ago` : "none";
  $("uptime").textContent = ago(s.uptime);
  $("done").textContent = s.done === null || s.done === undefined
    ? "unbounded" : (st.phase === "finished" ? 100 : s.done * 100).toFixed(1) + " %";
  drawGraph(s.graph, s.operators);
  plot($("plot-throughput"), s.series.map((p) => [p[0], p[1]]), "#2563eb", "");
  plot($("plot-lag"), s.series.map((p) => [p[0], p[2]]), "#d97706", "s");
  rows($("operators").tBodies[0], s.operators, (o) => [o.name, o.kind, fmt(o.records_in),
    fmt(o.records_out), fmt(o.rate), o.lag === null ? "–" : o.lag.toFixed(2),
    fmt(o.source_lag), fmt(o.late),
    fmt(o.queue), o.keys === null ? "–" : fmt(o.keys), o.busy_seconds.toFixed(2)]);
  rows($("workers").tBodies[0], s.workers, (w) => [w.id, w.attempt, w.last_report_age.toFixed(1),
    w.saturated_pipes, w.backpressured_seconds.toFixed(1)]);
  rows($("snapshots").tBodies[0], s.snapshots.slice().reverse(), (n) => [
    n.version + (n.final ? " (final)" : ""), n.duration.toFixed(3), bytes(n.size),
    ago(s.now - n.committed) + " ago"]);
  $("events").replaceChildren(...s.events.slice().reverse().map((e) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(e.t * 1000).toLocaleTimeString()} ${e.text}`;
    return li;
  }));
}

async function act(kind, body) {
  const out = $("action-result");
  const token = $("token").value.trim();
  sessionStorage.setItem("malstrom-token", token);
  out.className = "";
  out.textContent = `${kind}: running…`;
  try {
    const r = await fetch("api/" + kind, {
      method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    out.textContent = `${kind}: done (${JSON.stringify(data.result)})`;
  } catch (e) {
    out.className = "error";
    out.textContent = `${kind} failed: ${e.message}`;
  }
  refresh();
}

function init() {
  // The token may come in the URL fragment (never sent to the server), else from this tab.
  const m = location.hash.match(/token=([^&]+)/);
  $("token").value = m ? decodeURIComponent(m[1]) : (sessionStorage.getItem("malstrom-token") || "");
  $("snapshot-btn").onclick = () => act("snapshot");
  $("rescale-btn").onclick = () => act("rescale", { workers: Number($("rescale-n").value) });
  $("stop-btn").onclick = () => { if (confirm("Stop the job with a final snapshot?")) act("stop"); };
  refresh();
  setInterval(refresh, 1000);
}
init();
