// HighlightSense review page: no build step, no library. The server chooses (the same code as
// `select`); this page draws, asks and shows.
"use strict";

const W = 1000, H = 260, PAD = 18;
const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";
let run = null;        // /api/run
let view = null;       // the list shown: {highlights, threshold, pending}
let decisions = {};    // rank (of the saved selection) -> {keep, note}
let yMax = 1, yMin = 0, duration = 1;
let previewSeq = 0;

function setStatus(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

async function api(path, data) {
  const opts = data === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)};
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const xOf = (t) => (t / duration) * W;
const yOf = (s) => H - PAD - ((s - yMin) / (yMax - yMin)) * (H - 2 * PAD);
const sOf = (y) => yMin + ((H - PAD - y) / (H - 2 * PAD)) * (yMax - yMin);

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function drawChart() {
  const svg = $("#chart");
  svg.textContent = "";
  const saved = el("g", {id: "saved"}, svg);
  for (const h of run.highlights) {
    el("rect", {class: "saved", x: xOf(h.start_sec), y: PAD / 2,
                width: Math.max(1, xOf(h.end_sec) - xOf(h.start_sec)), height: H - PAD}, saved);
  }
  el("g", {id: "chosen"}, svg);
  const pts = run.windows.map(([a, b, s]) => `${xOf((a + b) / 2).toFixed(2)},${yOf(s).toFixed(2)}`);
  el("polyline", {class: "curve", points: pts.join(" ")}, svg);
  for (let i = 0; i <= 4; i++) {
    const t = (duration * i) / 4;
    const label = el("text", {class: "axis", x: i === 4 ? W - 2 : xOf(t) + 2, y: H - 4,
                              "text-anchor": i === 4 ? "end" : "start"}, svg);
    label.textContent = hms(t);
  }
  const g = el("g", {id: "threshold-line"}, svg);
  el("line", {class: "threshold", x1: 0, x2: W, y1: 0, y2: 0}, g);
  el("line", {class: "handle", x1: 0, x2: W, y1: 0, y2: 0}, g);
  const label = el("text", {class: "axis", id: "threshold-label", x: 4, y: 0}, g);
  label.textContent = "";
  drawChosen();
  drawThreshold(view.threshold);
  makeDraggable(g, svg);
}

function drawChosen() {
  const g = $("#chosen");
  g.textContent = "";
  for (const h of view.highlights) {
    el("rect", {class: "chosen", x: xOf(h.start_sec), y: PAD / 2,
                width: Math.max(1, xOf(h.end_sec) - xOf(h.start_sec)), height: H - PAD,
                "data-rank": h.rank}, g);
  }
}

function drawThreshold(value) {
  const y = yOf(value);
  for (const line of document.querySelectorAll("#threshold-line line")) {
    line.setAttribute("y1", y);
    line.setAttribute("y2", y);
  }
  const label = $("#threshold-label");
  label.setAttribute("y", Math.max(12, y - 4));
  label.textContent = `threshold ${Number(value).toFixed(4)}`;
}

function makeDraggable(g, svg) {
  let dragging = false;
  const toScore = (ev) => {
    const box = svg.getBoundingClientRect();
    const y = ((ev.clientY - box.top) / box.height) * H;
    const s = Math.min(yMax, Math.max(yMin, sOf(y)));
    return Math.round(s * 1e4) / 1e4;
  };
  g.addEventListener("pointerdown", (ev) => {
    dragging = true;
    g.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  });
  g.addEventListener("pointermove", (ev) => {
    if (!dragging) return;
    const s = toScore(ev);
    $("#threshold").value = s.toFixed(4);
    drawThreshold(s);
    schedulePreview(150);
  });
  const end = (ev) => {
    if (!dragging) return;
    dragging = false;
    const s = toScore(ev);
    $("#threshold").value = s.toFixed(4);
    drawThreshold(s);
    schedulePreview(0);
  };
  g.addEventListener("pointerup", end);
  g.addEventListener("pointercancel", end);
}

let previewTimer = null;
function schedulePreview(ms) {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(preview, ms);
}

function settingsFromControls() {
  const out = {};
  const t = parseFloat($("#threshold").value);
  if (!Number.isNaN(t)) out.threshold = t;
  const n = parseInt($("#top-n").value, 10);
  if (!Number.isNaN(n)) out.top_n = n;
  const nms = parseFloat($("#nms").value);
  if (!Number.isNaN(nms)) out.nms_window = nms;
  return out;
}

async function preview() {
  const seq = ++previewSeq;
  document.body.dataset.busy = "1";
  try {
    const p = await api("/api/preview", settingsFromControls());
    if (seq !== previewSeq) return;  // a newer request is on its way
    view = {highlights: p.highlights, threshold: p.threshold, pending: !p.same_as_saved};
    $("#summary").textContent = p.summary.join("\n");
    drawChosen();
    drawThreshold(settingsFromControls().threshold ?? p.threshold);
    renderList();
    setStatus(`${p.highlights.length} highlights at this threshold` +
              (view.pending ? " (preview: Apply runs select)" : ""));
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    if (seq === previewSeq) document.body.dataset.busy = "0";
  }
}

function hms(t) {
  t = Math.max(0, Math.floor(t));
  const p = (n) => String(n).padStart(2, "0");
  return `${p(Math.floor(t / 3600))}:${p(Math.floor(t / 60) % 60)}:${p(t % 60)}`;
}

function renderList() {
  const body = $("#list tbody");
  body.textContent = "";
  $("#pending").hidden = !view.pending;
  for (const h of view.highlights) {
    const savedRank = view.pending ? h.saved_rank : h.rank;
    const d = savedRank ? decisions[String(savedRank)] : undefined;
    const tr = document.createElement("tr");
    tr.dataset.rank = h.rank;
    tr.dataset.start = h.start_sec;
    tr.dataset.end = h.end_sec;
    if (d && d.keep === true) tr.className = "keep";
    if (d && d.keep === false) tr.className = "drop";
    const cell = (text, cls) => {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (text !== undefined) td.textContent = text;
      tr.appendChild(td);
      return td;
    };
    cell(String(h.rank), "rank");
    cell(h.start_ts || hms(h.start_sec));
    cell(h.end_ts || hms(h.end_sec));
    cell(Number(h.confidence).toFixed(3));
    const play = cell(undefined, "play");
    const pb = document.createElement("button");
    pb.textContent = "▶ play";
    pb.className = "play-button";
    pb.addEventListener("click", () => playIn(play, h, savedRank));
    play.appendChild(pb);
    const dec = cell(undefined, "decision");
    const note = cell(undefined, "note");
    const input = document.createElement("input");
    input.type = "text";
    input.placeholder = "note";
    input.value = (d && d.note) || "";
    input.disabled = !savedRank || view.pending;
    for (const [word, value] of [["keep", true], ["drop", false]]) {
      const b = document.createElement("button");
      b.textContent = word;
      b.className = word + (d && d.keep === value ? " on" : "");
      b.disabled = !savedRank || view.pending;
      b.addEventListener("click", () => {
        const cur = decisions[String(savedRank)];
        const keep = cur && cur.keep === value ? null : value;
        decide(savedRank, keep, input.value);
      });
      dec.appendChild(b);
    }
    let noteTimer = null;
    input.addEventListener("input", () => {
      clearTimeout(noteTimer);
      noteTimer = setTimeout(() => decide(savedRank, currentKeep(savedRank), input.value, false), 400);
    });
    input.addEventListener("change", () => {
      clearTimeout(noteTimer);
      decide(savedRank, currentKeep(savedRank), input.value, false);
    });
    note.appendChild(input);
    body.appendChild(tr);
  }
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function currentKeep(rank) {
  const d = decisions[String(rank)];
  return d ? d.keep : null;
}

async function decide(rank, keep, note, redraw = true) {
  try {
    const r = await api("/api/decision", {rank, keep, note});
    decisions = r.decisions;
    if (redraw) renderList();
    setStatus(`saved rank ${rank}`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function playIn(cell, h, savedRank) {
  for (const old of document.querySelectorAll("#list video, #list audio")) {
    old.pause();
    old.remove();
  }
  let src, offset, end;
  const saved = savedRank && run.highlights.find((r) => r.rank === savedRank);
  try {
    if (saved && saved.clip) {  // the same window as the saved one: its clip
      src = `/media/clip/${saved.rank}`;
      offset = h.start_sec - Number(saved.clip_start_sec || 0);
      end = h.end_sec - Number(saved.clip_start_sec || 0);
    } else if (run.play_mode === "source") {
      src = "/media/source";
      offset = h.start_sec + Number(run.origin_sec || 0);
      end = h.end_sec + Number(run.origin_sec || 0);
    } else if (run.play_mode === "window") {
      setStatus("preparing the window...");
      const w = await api("/api/window", {start: h.start_sec, end: h.end_sec});
      src = w.url;
      offset = h.start_sec - w.clip_start_sec;
      end = h.end_sec - w.clip_start_sec;
    } else {
      setStatus("cannot play: no clip was cut, and the source is a URL or gone", true);
      return;
    }
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  const media = document.createElement(run.has_video ? "video" : "audio");
  media.controls = true;
  media.preload = "auto";
  media.addEventListener("loadedmetadata", () => {
    media.currentTime = Math.max(0, offset);
    media.play().catch((e) => setStatus(`press play (${e.name})`));
  }, {once: true});
  media.addEventListener("timeupdate", () => {
    if (media.currentTime >= end) media.pause();
  });
  media.addEventListener("error", () => setStatus("this browser cannot play the media", true));
  media.src = src;
  cell.appendChild(media);
  setStatus(`playing rank ${h.rank}`);
}

async function action(button, path, data, done) {
  button.disabled = true;
  setStatus(`${button.textContent}...`);
  try {
    done(await api(path, data));
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    button.disabled = false;
  }
}

function showRun(r) {
  run = r;
  decisions = r.decisions || {};
  view = {highlights: r.highlights, threshold: r.threshold, pending: false};
  duration = r.duration_sec || (r.windows.length ? r.windows[r.windows.length - 1][1] : 1);
  const scores = r.windows.map((w) => w[2]);
  yMin = Math.min(0, ...scores);
  yMax = Math.max(1e-6, ...scores, r.threshold || 0) * 1.05;
  $("#name").textContent = r.name;
  $("#summary").textContent = r.summary.join("\n");
  $("#threshold").value = Number(r.threshold).toFixed(4);
  $("#top-n").value = r.settings.top_n;
  $("#nms").value = r.settings.nms_window;
  const fmt = $("#format");
  fmt.textContent = "";
  for (const f of r.export_formats) {
    const o = document.createElement("option");
    o.value = o.textContent = f;
    fmt.appendChild(o);
  }
  drawChart();
  renderList();
}

async function main() {
  showRun(await api("/api/run"));
  $("#threshold").addEventListener("change", () => {
    drawThreshold(parseFloat($("#threshold").value));
    schedulePreview(0);
  });
  $("#top-n").addEventListener("change", () => schedulePreview(0));
  $("#nms").addEventListener("change", () => schedulePreview(0));
  $("#apply").addEventListener("click", (ev) => action(ev.target, "/api/apply",
    settingsFromControls(), (r) => { showRun(r); setStatus("selection applied (select)"); }));
  $("#cut").addEventListener("click", (ev) => action(ev.target, "/api/cut", {},
    (r) => setStatus(`cut ${r.clips.length} kept clips into ${r.folder}`)));
  $("#labels").addEventListener("click", (ev) => action(ev.target, "/api/labels", {},
    (r) => setStatus(`wrote ${r.path} (${r.rows} rows)`)));
  $("#export").addEventListener("click", (ev) => action(ev.target, "/api/export",
    {format: $("#format").value}, (r) => setStatus(`wrote ${r.written.join(", ")}`)));
  document.body.dataset.ready = "1";
}

main().catch((e) => setStatus(e.message, true));
