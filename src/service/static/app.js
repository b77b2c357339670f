// glad-edge live view: polls /api/cameras (1 s) and /api/results (2 s), no external code
// (h, fmt and driftText come from dom.js).
"use strict";

const TREND_MS = 5 * 60 * 1000;
const POLL_CAMERAS_MS = 1000;
const POLL_RESULTS_MS = 2000;
const cams = new Map(); // name -> { el, history: [], since, seq }

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}

function picture(label, cls) {
  const img = h("img", { class: cls, alt: label });
  img.addEventListener("load", () => {
    if (img.naturalWidth > 0) img.dataset.loaded = "1";
  });
  img.addEventListener("error", () => { img.dataset.loaded = "0"; });
  const none = h("span", { class: "none" }, "no frame yet");
  return { box: h("div", { class: "pic" }, img, h("span", { class: "tag" }, label), none), img, none };
}

function makeCard(cam) {
  const frame = picture("frame", "frame");
  const heat = picture("heatmap", "heatmap");
  const verdict = h("div", { class: "verdict", "data-verdict": "none" }, "—");
  const scoreVal = h("span", { class: "val" }, "—");
  const thrVal = h("span", {}, "threshold —");
  const fill = h("div", { class: "fill" });
  const thr = h("div", { class: "thr" });
  const cOk = h("b", {}, "0"), cNg = h("b", {}, "0"), cErr = h("b", {}, "0");
  const dot = h("span", { class: "dot" });
  const streamText = h("span", {}, cam.status || "");
  const drift = h("span", { class: "chip drift drift-none" }, "drift: —");
  const recipe = h("span", { class: "chip recipe", hidden: "" }, "");
  const trend = svg("svg", { viewBox: "0 0 600 110", preserveAspectRatio: "none", class: "trend-svg" });
  const meta = h("div", { class: "meta" });
  const el = h("section", { class: "cam", "data-camera": cam.name },
    h("div", { class: "cam-head" },
      h("div", {}, h("span", { class: "cam-name" }, cam.name), h("span", { class: "chip" }, cam.triggered ? "triggered" : "continuous"), recipe, drift),
      h("div", { class: "stream" }, dot, streamText)),
    h("div", { class: "cam-body" },
      h("div", { class: "pics" }, frame.box, heat.box),
      h("div", { class: "side" },
        verdict,
        h("div", { class: "score" },
          h("div", { class: "row" }, h("span", {}, "score"), thrVal),
          scoreVal,
          h("div", { class: "bar" }, fill, thr)),
        h("div", { class: "counts" },
          h("div", { class: "count ok" }, cOk, h("span", {}, "OK")),
          h("div", { class: "count ng" }, cNg, h("span", {}, "NG")),
          h("div", { class: "count err" }, cErr, h("span", {}, "errors"))))),
    h("div", { class: "trend" }, trend),
    meta);
  return { el, frame, heat, verdict, scoreVal, thrVal, fill, thr, cOk, cNg, cErr, dot, streamText, trend, meta, drift, recipe };
}

function setPicture(p, url, seq) {
  if (p.img.dataset.seq === String(seq)) return;
  p.img.dataset.seq = String(seq);
  p.img.src = url + "?seq=" + seq;
  p.none.hidden = true;
}

function updateCard(c, cam) {
  const ui = c.ui;
  const r = cam.latest;
  ui.dot.className = "dot " + (cam.streaming ? "on" : cam.triggered ? "idle" : "off");
  const d = cam.drift;
  const [dText, dCls] = driftText(d);
  ui.drift.textContent = dText;
  ui.drift.className = "chip drift drift-" + dCls;
  ui.recipe.hidden = !cam.recipe;
  if (cam.recipe) ui.recipe.textContent = "recipe " + cam.recipe.number + ": " + cam.recipe.active;
  ui.streamText.textContent = cam.triggered && !cam.streaming ? "waiting for trigger · " + cam.status : cam.status;
  ui.cOk.textContent = cam.counts.ok;
  ui.cNg.textContent = cam.counts.ng;
  ui.cErr.textContent = cam.counts.error;
  let v = "none", text = "—", sub = "no frame yet";
  if (r) {
    if (!r.ok) { v = "error"; text = "ERROR"; sub = r.error || "failed frame"; }
    else if (r.verdict === "anomalous") { v = "ng"; text = "NG"; }
    else if (r.verdict === "normal") { v = "ok"; text = "OK"; }
    else { v = "none"; text = "—"; sub = "no threshold"; }
    if (r.ok) sub = "#" + r.seq + " · " + ago(r.t_capture_ms);
  }
  ui.verdict.className = "verdict " + v;
  ui.verdict.dataset.verdict = v;
  ui.verdict.replaceChildren(text, h("small", {}, sub));
  c.el.className = "cam v-" + v;
  const score = r ? r.score : null, threshold = r ? r.threshold : null;
  ui.scoreVal.textContent = fmt(score, 3);
  ui.thrVal.textContent = "threshold " + fmt(threshold, 3);
  const top = Math.max(threshold ? threshold * 2 : 1, score || 0, 1e-9);
  ui.fill.style.width = Math.min(100, ((score || 0) / top) * 100) + "%";
  ui.fill.className = "fill" + (r && r.verdict === "anomalous" ? " ng" : "");
  ui.thr.style.left = (threshold ? (threshold / top) * 100 : 50) + "%";
  ui.thr.hidden = !threshold;
  const name = encodeURIComponent(cam.name);
  if (cam.has_frame) setPicture(ui.frame, "/latest/" + name + ".jpg", r.seq);
  if (cam.has_heatmap) setPicture(ui.heat, "/latest/" + name + "/heatmap.png", r.seq);
  ui.meta.replaceChildren(
    h("span", {}, "latency ", h("b", {}, r ? fmt(r.latency_ms, 0) + " ms" : "—")),
    h("span", {}, "ADP step ", h("b", {}, r && r.adp_step !== null ? String(r.adp_step) : "—")),
    h("span", {}, "dropped ", h("b", {}, r ? String(r.dropped) : "—")),
    h("span", {}, "pending triggers ", h("b", {}, String(cam.pending_triggers))),
  );
  c.threshold = threshold;
  c.lastSeq = r ? r.seq : undefined;
}

function drawTrend(c) {
  const W = 600, H = 110, pad = 4;
  const s = c.ui.trend;
  const now = c.history.length ? Math.max(Date.now(), c.history[c.history.length - 1].t) : Date.now();
  c.history = c.history.filter((p) => now - p.t <= TREND_MS);
  const pts = c.history;
  // The window grows with the data up to TREND_MS, so a fresh start is not a sliver at the edge.
  const span = Math.min(TREND_MS, Math.max(20000, pts.length ? (now - pts[0].t) * 1.05 : 0));
  const thr = c.threshold;
  let top = thr ? thr * 2 : 1;
  for (const p of pts) if (p.score !== null && p.score > top) top = p.score * 1.1;
  const x = (t) => pad + ((t - (now - span)) / span) * (W - 2 * pad);
  const y = (v) => H - pad - (Math.max(0, v) / top) * (H - 2 * pad);
  const kids = [];
  if (thr) {
    kids.push(svg("line", { class: "thr-line", x1: 0, x2: W, y1: y(thr), y2: y(thr) }));
    const lbl = svg("text", { class: "axis", x: W - 4, y: y(thr) - 3, "text-anchor": "end" });
    lbl.textContent = "threshold " + fmt(thr, 3);
    kids.push(lbl);
  }
  const scored = pts.filter((p) => p.score !== null);
  if (scored.length > 1) {
    const d = scored.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.score).toFixed(1)).join(" ");
    kids.push(svg("path", { class: "line", d }));
  }
  for (const p of pts) {
    if (p.ng) kids.push(svg("circle", { class: "pt-ng", cx: x(p.t), cy: y(p.score), r: 2.5 }));
    if (p.err) kids.push(svg("circle", { class: "pt-err", cx: x(p.t), cy: H - pad - 2, r: 2.5 }));
  }
  const lbl = svg("text", { class: "axis", x: 4, y: 12 });
  const spanText = span >= 60000 ? (span / 60000).toFixed(1) + " min" : Math.round(span / 1000) + " s";
  lbl.textContent = "score, last " + spanText + " (" + pts.length + " frames)";
  kids.push(lbl);
  s.replaceChildren(...kids);
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok && !("ready" in body)) throw new Error(body.error || r.status);
  return body;
}

async function pollCameras() {
  try {
    const st = await getJson("/api/cameras");
    const grid = document.getElementById("cameras");
    if (!st.cameras.length) grid.replaceChildren(h("div", { class: "empty" }, "no cameras configured"));
    for (const cam of st.cameras) {
      let c = cams.get(cam.name);
      if (!c) {
        const ui = makeCard(cam);
        c = { el: ui.el, ui, history: [], since: null, threshold: null };
        cams.set(cam.name, c);
        grid.append(ui.el);
      }
      updateCard(c, cam);
    }
    const ready = document.getElementById("ready");
    ready.textContent = st.ready ? "READY" : "NOT READY";
    ready.className = "pill " + (st.ready ? "pill-ok" : "pill-bad");
    const reasons = document.getElementById("reasons");
    reasons.hidden = st.ready;
    reasons.textContent = st.reasons.join(" · ");
    let ok = 0, ng = 0, err = 0;
    for (const cam of st.cameras) { ok += cam.counts.ok; ng += cam.counts.ng; err += cam.counts.error; }
    document.getElementById("summary").textContent =
      st.cameras.length + " camera(s) · " + ok + " OK · " + ng + " NG · " + err + " errors";
    document.getElementById("version").textContent = "glad " + st.glad_version;
    document.getElementById("conn").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    const ready = document.getElementById("ready");
    ready.textContent = "OFFLINE";
    ready.className = "pill pill-bad";
    document.getElementById("conn").textContent = "connection lost: " + e;
  }
}

async function pollResults() {
  for (const [name, c] of cams) {
    try {
      let url = "/api/results?limit=1000&camera=" + encodeURIComponent(name);
      if (c.since !== null) url += "&since=" + c.since;
      const body = await getJson(url);
      // A restarted station counts from 1 again: start over.
      if (c.since !== null && c.lastSeq !== undefined && c.lastSeq < c.since) { c.since = null; c.history = []; continue; }
      for (const r of body.records) {
        c.history.push({ t: r.t_capture_ms, score: r.ok ? r.score : null, ng: r.verdict === "anomalous", err: !r.ok });
        c.since = r.seq;
      }
      drawTrend(c);
    } catch (e) { /* shown by pollCameras */ }
  }
}

function tick() {
  document.getElementById("clock").textContent = new Date().toLocaleString();
}

document.getElementById("window-min").textContent = String(TREND_MS / 60000);
tick();
setInterval(tick, 1000);
pollCameras().then(pollResults);
setInterval(pollCameras, POLL_CAMERAS_MS);
setInterval(pollResults, POLL_RESULTS_MS);
