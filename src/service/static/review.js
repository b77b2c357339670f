// glad-edge NG review: polls /api/review (2 s); feedback buttons POST /api/feedback
// (h, fmt and driftText come from dom.js).
"use strict";

const POLL_MS = 2000;
const tokenBox = () => document.getElementById("token");

function say(text, bad) {
  const m = document.getElementById("message");
  m.hidden = false;
  m.className = bad ? "reasons" : "reasons note";
  m.textContent = text;
}

async function feedback(rec, kind) {
  const body = { camera: rec.camera, run_id: rec.run_id, seq: rec.seq, feedback: kind };
  try {
    const r = await fetch("/api/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + tokenBox().value },
      body: JSON.stringify(body),
    });
    const j = await r.json();
    if (!r.ok) { say(`${rec.camera} #${rec.seq}: ${j.error}`, true); return; }
    if (kind === "good") {
      say(j.applies ? `${rec.camera} #${rec.seq}: taught as good (overlay version ${j.version}, ${j.patches} patches)` : `${rec.camera} #${rec.seq}: ${j.reason}`, false);
    } else {
      say(`${rec.camera} #${rec.seq}: filed as defect (${j.filed.input})`, false);
    }
  } catch (e) {
    say("feedback failed: " + e, true);
  }
}

function picture(cls, alt, src) {
  const img = h("img", { class: cls, alt });
  img.addEventListener("load", () => { if (img.naturalWidth > 0) img.dataset.loaded = "1"; });
  img.addEventListener("error", () => { img.dataset.loaded = "0"; });
  img.src = src;
  return img;
}

function frameCard(item) {
  const rec = item.record;
  const t = new Date(rec.t_capture_ms);
  const pics = h("div", { class: "pics" },
    h("div", { class: "pic" }, picture("frame", "input", item.input), h("span", { class: "tag" }, "input")),
    h("div", { class: "pic" }, item.heatmap ? picture("heatmap", "heatmap", item.heatmap) : h("span", { class: "none" }, "no heatmap"), h("span", { class: "tag" }, "heatmap")));
  const good = h("button", { class: "btn btn-ok", type: "button" }, "good");
  const defect = h("button", { class: "btn btn-ng", type: "button" }, "defect");
  good.addEventListener("click", () => feedback(rec, "good"));
  defect.addEventListener("click", () => feedback(rec, "defect"));
  return h("div", { class: "ng-item" }, pics,
    h("div", { class: "meta" },
      h("span", { class: "verdict", "data-verdict": "anomalous" }, "NG"),
      h("span", {}, `score ${fmt(rec.score, 3)} / threshold ${fmt(rec.threshold, 3)}`),
      h("span", {}, `#${rec.seq} · ${t.toLocaleTimeString()}`),
      good, defect));
}

let lastKey = "";

async function poll() {
  try {
    const r = await fetch("/api/review", { cache: "no-store" });
    const j = await r.json();
    document.getElementById("conn").textContent = "updated " + new Date().toLocaleTimeString();
    const key = JSON.stringify(j.cameras.map((c) => [c.name, c.drift && c.drift.alarms, c.drift && c.drift.armed, c.ng.map((n) => n.record.seq)]));
    if (key !== lastKey) {
      lastKey = key;
      const main = document.getElementById("review");
      main.replaceChildren(...j.cameras.map((c) => {
        const [text, cls] = driftText(c.drift);
        return h("section", { class: "cam review-cam", "data-camera": c.name },
          h("div", { class: "cam-head" }, h("span", { class: "cam-name" }, c.name),
            h("span", { class: "chip drift drift-" + cls }, text)),
          c.ng.length ? h("div", { class: "ng-list" }, ...c.ng.map(frameCard)) : h("div", { class: "none-yet" }, "no NG frames yet"));
      }));
    }
  } catch (e) {
    document.getElementById("conn").textContent = "connection lost";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("glad-token");
  if (saved) tokenBox().value = saved;
  tokenBox().addEventListener("change", () => sessionStorage.setItem("glad-token", tokenBox().value));
  setInterval(() => { document.getElementById("clock").textContent = new Date().toLocaleTimeString(); }, 1000);
  poll();
  setInterval(poll, POLL_MS);
});
