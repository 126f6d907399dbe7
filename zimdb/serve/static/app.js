"use strict";

const EXAMPLES = {
  positive:
    "I went in expecting very little and came out grinning. The cast is wonderful, the script " +
    "is sharp and funny, and the final act is genuinely moving. One of the best films I have " +
    "seen this year: beautifully shot, superbly acted, and I would happily watch it again.",
  negative:
    "What a waste of two hours. The plot makes no sense, the dialogue is wooden and the acting " +
    "is so bad it is almost funny. Nothing happens for the first hour and the ending is even " +
    "worse. I was bored from start to finish. Avoid this mess.",
  mixed:
    "The first half is wonderful: a clever premise, a charming lead and some of the best " +
    "photography I have seen in years. But then it all falls apart. The plot stops making " +
    "sense, the jokes dry up and the last hour is a dull, boring slog. What a waste.",
};

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let latest = 0; // the newest request: answers to older ones are dropped
let shown = null; // the reading on screen, redrawn when the window resizes

function percent(p) {
  return `${Math.round(p * 100)}%`;
}

// Red below 0.5, green above, stronger the further from 0.5.
function tint(p) {
  const strength = Math.abs(p - 0.5) * 2;
  const rgb = p >= 0.5 ? "26, 127, 75" : "194, 54, 43";
  return `rgba(${rgb}, ${(0.05 + 0.5 * strength).toFixed(3)})`;
}

function el(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function drawChart(reading) {
  const svg = $("chart");
  svg.replaceChildren();
  const run = reading.running;
  const width = svg.clientWidth || 900;
  const height = svg.clientHeight || 190;
  const pad = { left: 38, right: 10, top: 12, bottom: 22 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const x = (i) => pad.left + (run.length > 1 ? (i / (run.length - 1)) * w : w / 2);
  const y = (p) => pad.top + (1 - p) * h;

  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    el("line", { x1: pad.left, x2: pad.left + w, y1: y(p), y2: y(p), class: p === 0.5 ? "mid" : "axis" }, svg);
    const t = el("text", { x: pad.left - 6, y: y(p) + 4, "text-anchor": "end", class: "tick" }, svg);
    t.textContent = percent(p);
  }
  const first = el("text", { x: pad.left, y: height - 4, class: "tick" }, svg);
  first.textContent = reading.cut && reading.truncate === "tail" ? `word ${reading.cut + 1}` : "word 1";
  const last = el("text", { x: pad.left + w, y: height - 4, "text-anchor": "end", class: "tick" }, svg);
  last.textContent = `word ${reading.words.length + (reading.truncate === "tail" ? reading.cut : 0)}`;

  const points = run.map((p, i) => `${x(i).toFixed(1)},${y(p).toFixed(1)}`);
  // The area between the line and 0.5, green where it is above and red where below: one
  // polygon drawn twice, each clipped to its half of the chart.
  const area = `${x(0)},${y(0.5)} ${points.join(" ")} ${x(run.length - 1)},${y(0.5)}`;
  const defs = el("defs", {}, svg);
  const id = `c${Date.now()}`;
  el("rect", { x: 0, y: 0, width, height: y(0.5) }, el("clipPath", { id: `${id}-top` }, defs));
  el("rect", { x: 0, y: y(0.5), width, height }, el("clipPath", { id: `${id}-bottom` }, defs));
  el("polygon", { points: area, class: "area-pos", "clip-path": `url(#${id}-top)` }, svg);
  el("polygon", { points: area, class: "area-neg", "clip-path": `url(#${id}-bottom)` }, svg);
  el("polyline", { points: points.join(" "), class: "line" }, svg);

  // The biggest turns, named where they happen.
  for (const m of turningPoints(reading)) {
    const [px, py] = [x(m.i), y(run[m.i])];
    el("circle", { cx: px, cy: py, r: 3, class: m.d > 0 ? "turn up" : "turn down" }, svg);
    const right = px > pad.left + w * 0.85;
    const note = el("text", {
      x: px + (right ? -6 : 6),
      y: m.d > 0 ? Math.max(py - 7, pad.top + 4) : Math.min(py + 15, pad.top + h - 2),
      "text-anchor": right ? "end" : "start",
      class: m.d > 0 ? "turn-label up" : "turn-label down",
    }, svg);
    note.textContent = reading.words[m.i];
  }

  const cursor = el("line", { y1: pad.top, y2: pad.top + h, class: "cursor", visibility: "hidden" }, svg);
  const dot = el("circle", { r: 4.5, class: "dot", visibility: "hidden" }, svg);
  const label = el("text", { class: "hover-label", visibility: "hidden" }, svg);
  svg.highlight = (i) => {
    const visibility = i === null ? "hidden" : "visible";
    for (const node of [cursor, dot, label]) node.setAttribute("visibility", visibility);
    if (i === null) return;
    cursor.setAttribute("x1", x(i));
    cursor.setAttribute("x2", x(i));
    dot.setAttribute("cx", x(i));
    dot.setAttribute("cy", y(run[i]));
    label.textContent = `“${reading.words[i]}” ${percent(run[i])}`;
    const right = x(i) > pad.left + w * 0.7;
    label.setAttribute("x", x(i) + (right ? -8 : 8));
    label.setAttribute("text-anchor", right ? "end" : "start");
    label.setAttribute("y", run[i] > 0.8 ? y(run[i]) + 18 : y(run[i]) - 9);
  };
  svg.onmousemove = (event) => {
    const box = svg.getBoundingClientRect();
    const pos = ((event.clientX - box.left) / box.width) * width;
    const i = Math.round(((pos - pad.left) / w) * (run.length - 1));
    highlight(Math.min(Math.max(i, 0), run.length - 1));
  };
  svg.onmouseleave = () => highlight(null);
}

function highlight(i) {
  const words = $("words").querySelectorAll("span[data-i]");
  words.forEach((node) => node.classList.toggle("active", Number(node.dataset.i) === i));
  if ($("chart").highlight) $("chart").highlight(i);
}

// The three largest moves from one word to the next, in reading order.
function turningPoints(reading) {
  const run = reading.running;
  const moves = run.slice(1).map((p, k) => ({ i: k + 1, d: p - run[k] }));
  return moves
    .filter((m) => Math.abs(m.d) >= 0.05)
    .sort((a, b) => Math.abs(b.d) - Math.abs(a.d))
    .slice(0, 3)
    .sort((a, b) => a.i - b.i);
}

function renderWords(reading) {
  const box = $("words");
  box.replaceChildren();
  const ellipsis = () => {
    const span = document.createElement("span");
    span.className = "ellipsis";
    span.textContent = "…";
    box.append(span, " ");
  };
  if (reading.cut && reading.truncate === "tail") ellipsis();
  reading.words.forEach((word, i) => {
    const span = document.createElement("span");
    span.textContent = word;
    span.dataset.i = i;
    const parts = [];
    if (reading.running) {
      span.style.background = tint(reading.running[i]);
      parts.push(`P(positive) after this word: ${percent(reading.running[i])}`);
    }
    if (reading.unknown[i]) {
      span.classList.add("unk");
      parts.push("not in the vocabulary: read as <unk>");
    }
    span.title = parts.join("\n");
    span.onmouseenter = () => highlight(i);
    span.onmouseleave = () => highlight(null);
    box.append(span, " ");
  });
  if (reading.cut && reading.truncate === "head") ellipsis();
}

function render(reading) {
  shown = reading;
  $("result").hidden = false;
  const verdict = $("verdict");
  verdict.dataset.label = reading.label;
  verdict.textContent = reading.label === "positive" ? "Positive" : "Negative";
  $("probability").textContent = `${(reading.probability * 100).toFixed(1)}% positive`;
  $("meter-fill").style.left = `${reading.probability * 100}%`;

  const note = $("note");
  note.hidden = true;
  if (reading.running === null) {
    note.textContent = `${reading.running_note} The verdict above is the whole review's.`;
    note.hidden = false;
  } else if (reading.words.length === 0) {
    note.textContent =
      "Nothing of this text is left after cleaning (only the letters a to z and apostrophes " +
      "are kept), so the model read a single padding token: the verdict above is what it " +
      "makes of that.";
    note.hidden = false;
  }

  $("legend").hidden = reading.words.length === 0;
  $("legend-tint").hidden = reading.running === null;
  const chartShown = Boolean(reading.running && reading.running.length);
  $("chart-box").hidden = !chartShown;
  if (chartShown) drawChart(reading);

  const turns = chartShown ? turningPoints(reading) : [];
  const turnsBox = $("turns");
  turnsBox.replaceChildren();
  turnsBox.hidden = turns.length === 0;
  if (turns.length) {
    turnsBox.append("Biggest turns: ");
    turns.forEach((m, k) => {
      const b = document.createElement("b");
      b.className = m.d > 0 ? "up" : "down";
      const sign = m.d > 0 ? "+" : "−";
      b.textContent = `“${reading.words[m.i]}” ${sign}${Math.round(Math.abs(m.d) * 100)} pts`;
      b.onmouseenter = () => highlight(m.i);
      b.onmouseleave = () => highlight(null);
      turnsBox.append(k ? ", " : "", b);
    });
  }

  const cut = $("cut");
  cut.hidden = !reading.cut;
  if (reading.cut) {
    const [which, kept] = reading.truncate === "tail" ? ["first", "last"] : ["last", "first"];
    cut.textContent =
      `The ${which} ${reading.cut} word${reading.cut > 1 ? "s" : ""} were not read: ` +
      `the model reads only the ${kept} ${reading.max_len} words of a review.`;
  }
  renderWords(reading);
}

async function explain(text) {
  const ticket = ++latest;
  const status = $("status");
  status.className = "";
  status.textContent = "reading…";
  let response, body;
  try {
    response = await fetch("/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text }),
    });
    body = await response.json();
  } catch (error) {
    if (ticket !== latest) return;
    status.className = "error";
    status.textContent = `The server did not answer (${error.message}).`;
    return;
  }
  if (ticket !== latest) return;
  if (!response.ok) {
    status.className = "error";
    status.textContent = body.detail || `The server answered ${response.status}.`;
    return;
  }
  status.textContent = "";
  render(body);
  const url = new URL(location.href);
  url.hash = "";
  // A link to this review, while it is short enough to share as one.
  if (text.length <= 1500) url.searchParams.set("text", text);
  else url.searchParams.delete("text");
  history.replaceState(null, "", url);
}

function init() {
  const area = $("text");
  let timer = null;
  $("form").onsubmit = (event) => {
    event.preventDefault();
    clearTimeout(timer);
    explain(area.value);
  };
  area.oninput = () => {
    clearTimeout(timer);
    timer = setTimeout(() => explain(area.value), 450);
  };
  area.onkeydown = (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
  };
  document.querySelectorAll("button.example").forEach((button) => {
    button.onclick = () => {
      area.value = EXAMPLES[button.dataset.example];
      $("form").requestSubmit();
    };
  });
  window.addEventListener("resize", () => {
    if (shown && shown.running && shown.running.length) drawChart(shown);
  });

  // A review in the address (?text=… or #text=…) is read at once, so a link shows a result.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("text");
  const given = new URLSearchParams(location.search).get("text") ?? fromHash;
  if (given !== null) {
    area.value = given;
    explain(given);
  }
}

init();
