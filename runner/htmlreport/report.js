// The report page: reads the document in <script id="report-data">, draws the timeline
// with uPlot and fills the round and job panels. Every text a user, a model or a server
// wrote is set with textContent, never parsed as HTML.
"use strict";

let D, S, ROUNDS, KEYS;  // the document, once inflated (see start)
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2",
                 "#ff9da7", "#9c755f", "#e15759", "#bab0ac"];
const DRIFT_COLOURS = {
  stable: "#59a14f", baseline: "#9e9e9e", within_noise: "#8cd17d",
  fingerprint_changed: "#f28e2b", outputs_changed: "#edc948",
  distribution_changed: "#e15759", failures: "#b01c1c",
};

// ------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "style") Object.assign(node.style, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = {
  pct: (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"),
  num: (v, digits = 3) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits)),
  int: (v) => (v === null || v === undefined ? "-" : Number(v).toLocaleString("en")),
  p: (v) => (v === null || v === undefined ? "-" : v < 0.001 ? v.toExponential(1) : v.toFixed(3)),
  usd: (v) => (v === null || v === undefined ? "-" : "$" + v.toFixed(4)),
  when: (v) => (v ? v.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "-"),
};

function colourer() {
  const seen = new Map();
  return (value) => {
    if (value === null || value === undefined) return "#d0d0d0";
    if (!seen.has(value)) seen.set(value, PALETTE[seen.size % PALETTE.length]);
    return seen.get(value);
  };
}

// ------------------------------------------------------------ the word diff
// runner.analysis.similarity.word_diff: words with the whitespace after them, compared
// with Python's difflib.SequenceMatcher(autojunk=False); this is a port of its
// find_longest_match / get_matching_blocks / get_opcodes, so the pieces are the same.

// Python's str whitespace (\s on str), not JavaScript's (which adds U+FEFF, lacks U+001C-1F, U+0085).
const WS = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const WORDS = new RegExp(`^[${WS}]+|[^${WS}]+[${WS}]*`, "gu");

function words(text) {
  return text.match(WORDS) || [];
}

function matchingBlocks(a, b) {
  const b2j = new Map();
  b.forEach((word, j) => {
    if (!b2j.has(word)) b2j.set(word, []);
    b2j.get(word).push(j);
  });
  function longest(alo, ahi, blo, bhi) {
    let besti = alo, bestj = blo, bestsize = 0;
    let j2len = new Map();
    for (let i = alo; i < ahi; i++) {
      const newj2len = new Map();
      for (const j of b2j.get(a[i]) || []) {
        if (j < blo) continue;
        if (j >= bhi) break;
        const k = (j2len.get(j - 1) || 0) + 1;
        newj2len.set(j, k);
        if (k > bestsize) { besti = i - k + 1; bestj = j - k + 1; bestsize = k; }
      }
      j2len = newj2len;
    }
    while (besti > alo && bestj > blo && a[besti - 1] === b[bestj - 1]) {
      besti--; bestj--; bestsize++;
    }
    while (besti + bestsize < ahi && bestj + bestsize < bhi && a[besti + bestsize] === b[bestj + bestsize]) {
      bestsize++;
    }
    return [besti, bestj, bestsize];
  }
  const queue = [[0, a.length, 0, b.length]];
  const blocks = [];
  while (queue.length) {
    const [alo, ahi, blo, bhi] = queue.pop();
    const [i, j, k] = longest(alo, ahi, blo, bhi);
    if (k) {
      blocks.push([i, j, k]);
      if (alo < i && blo < j) queue.push([alo, i, blo, j]);
      if (i + k < ahi && j + k < bhi) queue.push([i + k, ahi, j + k, bhi]);
    }
  }
  blocks.sort((x, y) => x[0] - y[0] || x[1] - y[1] || x[2] - y[2]);
  const merged = [];
  let [i1, j1, k1] = [0, 0, 0];
  for (const [i2, j2, k2] of blocks) {
    if (i1 + k1 === i2 && j1 + k1 === j2) k1 += k2;
    else { if (k1) merged.push([i1, j1, k1]); [i1, j1, k1] = [i2, j2, k2]; }
  }
  if (k1) merged.push([i1, j1, k1]);
  merged.push([a.length, b.length, 0]);
  return merged;
}

function wordDiff(textA, textB) {
  const a = words(textA), b = words(textB);
  const pieces = [];
  let i = 0, j = 0;
  for (const [ai, bj, size] of matchingBlocks(a, b)) {
    if (i < ai) pieces.push(["delete", a.slice(i, ai).join("")]);
    if (j < bj) pieces.push(["insert", b.slice(j, bj).join("")]);
    if (size) pieces.push(["equal", a.slice(ai, ai + size).join("")]);
    i = ai + size; j = bj + size;
  }
  return pieces;
}
window.wordDiff = wordDiff;

// ------------------------------------------------------------ header

function header() {
  const b = D.batch;
  document.getElementById("title").textContent = `${b.name} (batch ${b.id})`;
  const rows = [
    ["source", `${b.source_path} (${b.source_format})`],
    ["source sha256", b.source_sha256],
    ["submitted", fmt.when(b.submitted_at)],
    ["jobs", fmt.int(b.job_count)],
    ["endpoints", b.endpoints.join(", ") || "-"],
    ["models", b.models.join(", ") || "-"],
    ["seeds", b.seeds],
    ["schedules", b.schedules.map((s) =>
      `${s.name}: ${s.cron} (${s.timezone})${s.samples ? `, ${s.samples} samples` : ""}` +
      `${s.alpha ? `, alpha ${s.alpha}` : ""}${s.paused ? ", paused" : ""}`).join("; ") || "none"],
    ["rounds", ROUNDS.length ? `${ROUNDS.length} (${ROUNDS[0].number} to ${ROUNDS.at(-1).number})` : "none"],
    ["generated", fmt.when(D.generated_at)],
  ];
  const dl = document.getElementById("facts");
  for (const [name, value] of rows) dl.append(el("dt", {}, name), el("dd", {}, value));
}

// ------------------------------------------------------------ timeline

const CHARTS = [
  { title: "Agreement with the round before", range: [0, 1], series: [
    ["exact match", "exact_match_rate", "#4e79a7", fmt.pct],
    ["mean similarity", "mean_similarity", "#59a14f", (v) => fmt.num(v)],
    ["p-value (distribution test)", "p_value", "#e15759", fmt.p]] },
  { title: "Failures", series: [["failed runs", "failures", "#b01c1c", fmt.int]] },
  { title: "Tokens and cost", series: [
    ["tokens", "tokens", "#4e79a7", fmt.int],
    ["cost (USD)", "cost", "#f28e2b", fmt.usd, "usd"]] },
  { title: "Latency (ms)", series: [
    ["p50", "latency_p50", "#76b7b2", (v) => fmt.num(v, 0)],
    ["p95", "latency_p95", "#b07aa1", (v) => fmt.num(v, 0)]] },
];

const charts = [];

function xRange(u, min, max) {
  return min === max ? [min - 1, max + 1] : [min - 0.5, max + 0.5];
}

function chart(spec, width, sync, ready) {
  const xs = ROUNDS.map((r) => r.number);
  const data = [xs, ...spec.series.map(([, field]) => ROUNDS.map((r) => r[field] ?? null))];
  const usd = spec.series.some((s) => s[4] === "usd");
  const opts = {
    title: spec.title, width, height: ready ? 180 : 150,
    hooks: ready ? { ready: [ready] } : {},
    cursor: { sync: { key: sync }, drag: { x: false, y: false } },
    scales: { x: { time: false, range: xRange }, y: spec.range ? { range: spec.range } : {},
              ...(usd ? { usd: {} } : {}) },
    axes: [
      { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? t : "")) },
      { size: ready ? 100 : 56 },
      ...(usd ? [{ scale: "usd", side: 1, size: 60, grid: { show: false } }] : []),
    ],
    series: [{ label: "round" }, ...spec.series.map(([label, , stroke, value, scale]) => ({
      label, stroke, width: 1.5, scale: scale || "y", spanGaps: true,
      points: { show: true, size: 5, fill: stroke },
      value: (u, v) => value(v),
    }))],
  };
  const target = el("div", { class: "chart" });
  (ready ? document.getElementById("charts") : document.getElementById("small-charts")).append(target);
  const u = new uPlot(opts, data, target);
  u.over.addEventListener("click", () => {
    if (u.cursor.idx !== null && u.cursor.idx !== undefined) showRound(u.cursor.idx);
  });
  return u;
}

// A strip of one cell per round, placed under the first chart's x positions.
function stripRow(u, name, box) {
  box.style.width = `${u.bbox.width / devicePixelRatio}px`;
  return el("div", { class: "strip-row" },
    el("span", { class: "strip-label", style: { width: `${u.bbox.left / devicePixelRatio}px` } }, name), box);
}

function strip(u, name, values, colour, describe) {
  const box = el("div", { class: "strip", "data-strip": name });
  const step = u.valToPos(ROUNDS[0].number + 1, "x") - u.valToPos(ROUNDS[0].number, "x");
  ROUNDS.forEach((r, i) => {
    const centre = u.valToPos(r.number, "x");
    const value = values[i];
    box.append(el("div", {
      class: "cell", "data-round": r.number, "data-value": value ?? "", title: describe(r, value),
      style: { left: `${centre - step / 2}px`, width: `${Math.max(step, 2)}px`, background: colour(value) },
      onclick: () => showRound(i),
    }));
  });
  return stripRow(u, name, box);
}

function markers(u) {
  const box = el("div", { class: "strip markers", "data-strip": "drift" });
  ROUNDS.forEach((r, i) => {
    if (!r.drift) return;
    box.append(el("div", {
      class: "marker", "data-round": r.number, "data-value": r.drift,
      title: `round ${r.number}: ${r.drift}: ${r.drift_explanation}`,
      style: { left: `${u.valToPos(r.number, "x") - 6}px`, background: DRIFT_COLOURS[r.drift] || "#666" },
      onclick: () => showRound(i),
    }));
  });
  return stripRow(u, "drift report", box);
}

// Under the first chart once it is laid out: the bands need its x positions.
function bands(u) {
  const fp = colourer(), model = colourer();
  u.root.after(el("div", { class: "strips" },
    markers(u),
    strip(u, "fingerprint", ROUNDS.map((r) => r.fingerprint), fp,
          (r, v) => `round ${r.number}: system_fingerprint ${v ?? "none"} (${r.fingerprints.join(", ") || "no successful run"})`),
    strip(u, "model returned", ROUNDS.map((r) => r.response_model), model,
          (r, v) => `round ${r.number}: model ${v ?? "none"}`)));
  document.body.dataset.timelinePoints = String(u.data[0].length);
}

function timeline() {
  const box = document.getElementById("charts");
  if (!ROUNDS.length) {
    box.append(el("p", { class: "empty" }, "This batch has no rounds in this report."));
    return;
  }
  const width = Math.max(600, Math.min(1200, (box.clientWidth || 1000) - 20));
  // The agreement chart across the page with the bands under it; the others in a row.
  charts.push(chart(CHARTS[0], width, "rounds", bands));
  box.append(el("div", { id: "small-charts" }));
  for (const spec of CHARTS.slice(1)) charts.push(chart(spec, Math.floor(width / 3) - 6, "rounds", null));
  const unpriced = [...new Set(ROUNDS.flatMap((r) => r.unpriced))];
  if (unpriced.length) {
    box.append(el("p", { class: "note" },
      `cost: unknown for ${unpriced.join(", ")} (no price in runner.toml [prices])`));
  }
}

// ------------------------------------------------------------ rounds

function roundsTable() {
  const body = document.querySelector("#round-table tbody");
  ROUNDS.forEach((r, i) => {
    const states = Object.entries(r.counts).map(([s, n]) => `${s} ${n}`).join(", ");
    body.append(el("tr", { "data-round": r.number, onclick: () => showRound(i) },
      el("td", {}, r.number), el("td", {}, r.trigger), el("td", {}, fmt.when(r.scheduled_for || r.created_at)),
      el("td", {}, states || "no runs"), el("td", {}, fmt.pct(r.exact_match_rate)),
      el("td", {}, fmt.p(r.p_value)), el("td", {}, r.fingerprints.join(", ") || "-"),
      el("td", {}, r.drift || "-")));
  });
}

function showRound(index) {
  const r = ROUNDS[index];
  const box = document.getElementById("round-detail");
  box.replaceChildren();
  if (!r) return;
  document.querySelectorAll("#round-table tr").forEach((tr) =>
    tr.classList.toggle("selected", tr.dataset.round === String(r.number)));
  box.dataset.round = r.number;
  const overrides = [r.endpoint && `endpoint ${r.endpoint}`, r.model && `model ${r.model}`,
                     r.samples && `${r.samples} samples`, r.selection && `selection ${r.selection}`]
    .filter(Boolean).join(", ");
  box.append(el("h3", {}, `Round ${r.number} (${r.trigger})${overrides ? ": " + overrides : ""}`));
  const counts = el("ul", { class: "counts" });
  for (const [state, n] of Object.entries(r.counts)) counts.append(el("li", { class: `state-${state}` }, `${state}: ${n}`));
  box.append(counts);
  box.append(el("p", {},
    `tokens ${fmt.int(r.prompt_tokens)} in + ${fmt.int(r.completion_tokens)} out; cost ${fmt.usd(r.cost)}; ` +
    `latency p50 ${fmt.num(r.latency_p50, 0)} ms, p95 ${fmt.num(r.latency_p95, 0)} ms`));
  if (r.drift) box.append(el("p", {}, el("strong", {}, `drift report: ${r.drift}`), ` (${r.drift_explanation})`));
  if (r.errors.length) {
    const list = el("ul", {});
    for (const [kind, n] of r.errors) list.append(el("li", {}, `${kind}: ${n}`));
    box.append(el("h4", {}, "Errors by kind"), list);
  }
  if (r.compared_with !== null) {
    box.append(el("h4", {}, `Jobs that changed most since round ${r.compared_with}`));
    if (!r.changed.length) box.append(el("p", {}, "none: every job's outputs are byte-identical"));
    const list = el("ol", {});
    for (const c of r.changed) {
      list.append(el("li", {}, el("a", { href: "#jobs", onclick: () => showJob(KEYS.indexOf(c.key), r.compared_with, r.number) }, c.key),
        ` similarity ${fmt.num(c.similarity)}` + (c.before !== "succeeded" || c.after !== "succeeded" ? ` (${c.before} → ${c.after})` : "")));
    }
    box.append(list);
  }
}

// ------------------------------------------------------------ jobs

function run(roundIndex, job) {
  const c = D.runs[roundIndex];
  if (c.state[job] === null) return null;
  const text = (i) => (i === null ? null : S[i]);
  return { state: D.states[c.state[job]], output: text(c.out[job]), fingerprint: text(c.fp[job]),
           model: text(c.model[job]), pt: c.pt[job], ct: c.ct[job], lat: c.lat[job],
           error: text(c.err[job]), samples: c.samples[job] };
}

function jobList() {
  const search = document.getElementById("search");
  const list = document.getElementById("job-list");
  function fill() {
    const needle = search.value.trim().toLowerCase();
    list.replaceChildren();
    let shown = 0;
    KEYS.forEach((key, i) => {
      if (shown >= 500 || (needle && !key.toLowerCase().includes(needle))) return;
      list.append(el("option", { value: i }, key));
      shown++;
    });
    document.getElementById("job-count").textContent =
      `${shown}${shown >= 500 ? "+" : ""} of ${KEYS.length} jobs`;
  }
  search.addEventListener("input", fill);
  list.addEventListener("change", () => showJob(Number(list.value)));
  fill();
}

function diffInto(box, job, a, b) {
  box.replaceChildren();
  const ra = run(a, job), rb = run(b, job);
  box.dataset.a = ROUNDS[a].number;
  box.dataset.b = ROUNDS[b].number;
  if (!ra || !rb || ra.state !== "succeeded" || rb.state !== "succeeded") {
    box.append(el("p", {}, "Both runs must have succeeded to be diffed."));
    return;
  }
  const pieces = wordDiff(ra.output || "", rb.output || "");
  box.dataset.pieces = JSON.stringify(pieces);
  const tag = { equal: "span", delete: "del", insert: "ins" };
  const pre = el("pre", { class: "diff" });
  for (const [op, text] of pieces) pre.append(el(tag[op], {}, text));
  box.append(pre);
}

function showJob(job, roundA, roundB) {
  const box = document.getElementById("job-detail");
  box.replaceChildren();
  if (job < 0 || job >= KEYS.length) return;
  box.dataset.job = KEYS[job];
  box.append(el("h3", {}, KEYS[job]), el("p", {}, `seed ${D.jobs.seeds[job] ?? "none"}`));
  const table = el("table", { class: "runs" }, el("thead", {}, el("tr", {},
    ...["round", "state", "fingerprint", "model", "tokens in/out", "latency ms", "output"].map((h) => el("th", {}, h)))));
  const body = el("tbody", {});
  const done = [];
  let last = null;
  ROUNDS.forEach((r, i) => {
    const x = run(i, job);
    if (!x) return;
    if (x.state === "succeeded") done.push(i);
    let output = x.error || x.output || "";
    let cls = x.error ? "error" : "output";
    if (!x.error && last !== null && x.output === last.text) { output = `= round ${last.round}`; cls = "same"; }
    if (x.state === "succeeded") last = { text: x.output, round: r.number };
    body.append(el("tr", { "data-round": r.number }, el("td", {}, r.number), el("td", {}, x.state),
      el("td", {}, x.fingerprint ?? "-"), el("td", {}, x.model ?? "-"),
      el("td", {}, `${x.pt ?? "-"} / ${x.ct ?? "-"}`), el("td", {}, x.lat ?? "-"),
      el("td", { class: cls }, output + (x.samples ? ` (first of ${x.samples} samples)` : ""))));
  });
  table.append(body);
  box.append(table);
  const diff = el("div", { id: "diff" });
  const pick = (selected) => {
    const select = el("select", {});
    ROUNDS.forEach((r, i) => select.append(el("option", { value: i, ...(i === selected ? { selected: "" } : {}) }, `round ${r.number}`)));
    return select;
  };
  const index = (number) => ROUNDS.findIndex((r) => r.number === number);
  let a = roundA !== undefined ? index(roundA) : done.length > 1 ? done.at(-2) : 0;
  let b = roundB !== undefined ? index(roundB) : done.length ? done.at(-1) : 0;
  if (a < 0) a = 0;
  if (b < 0) b = 0;
  const selA = pick(a), selB = pick(b);
  const redraw = () => diffInto(diff, job, Number(selA.value), Number(selB.value));
  selA.addEventListener("change", redraw);
  selB.addEventListener("change", redraw);
  box.append(el("h4", {}, "Word diff (as `runner diff`): ", selA, " → ", selB), diff);
  if (ROUNDS.length) redraw();
  document.getElementById("job-list").value = String(job);
}

// ------------------------------------------------------------ start

// runner.htmlreport.page.pack: gzip-compressed JSON in base64.
async function inflate(text) {
  const bytes = Uint8Array.from(atob(text.trim()), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

async function start() {
  D = await inflate(document.getElementById("report-data").textContent);
  S = D.strings;
  ROUNDS = D.rounds;
  KEYS = D.jobs.keys;
  header();
  timeline();
  roundsTable();
  jobList();
  if (ROUNDS.length) showRound(ROUNDS.length - 1);
  if (KEYS.length) {
    const latest = ROUNDS.at(-1);
    const first = latest && latest.changed.length ? KEYS.indexOf(latest.changed[0].key) : 0;
    showJob(first);
  } else {
    document.getElementById("job-detail").append(el("p", { class: "empty" }, "This batch has no jobs."));
  }
  document.body.dataset.ready = "1";
}

// Served live (runner report --serve): reload once the batch's runs moved.
function watch() {
  const now = async () => (await fetch("version", { cache: "no-store" })).text();
  const first = document.body.dataset.live;
  setInterval(async () => {
    try { if ((await now()) !== first) location.reload(); } catch (e) { /* server gone: keep the page */ }
  }, 5000);
}

start();
if (document.body.dataset.live) watch();
