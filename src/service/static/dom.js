// glad-edge pages: the DOM and formatting helpers the live and review pages share.
"use strict";

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(x, digits) {
  return x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);
}

// A camera's drift state as [text, class suffix] (chip drift-none | drift-ok | drift-ng).
function driftText(d) {
  if (!d) return ["drift: —", "none"];
  if (!d.armed) return ["drift: recording reference", "none"];
  if (d.alarms.length) return ["DRIFT: " + d.alarms.join(", "), "ng"];
  return ["no drift", "ok"];
}
