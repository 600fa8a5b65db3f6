"""`textrlhf report RUN [RUN ...]`: one self-contained HTML page (report.html) from run folders.

The page reads nothing at view time: the runs' metrics.csv, summary.json, config.yaml and
trajectories.jsonl are inlined as JSON, and the page's own small script draws them (SVG line
charts, no library, no network). It shows:

- the curves of metrics.csv (return, evaluation return, KL, beta, entropy, value loss, the
  `diagnostics/*` and `episode/*` metrics), several runs overlaid when several are given;
- the episode viewer: the logged episodes (agents/run/trajectories.py) as tokens coloured by who
  wrote them (prompt / agent / environment), log-prob, KL to the reference, advantage or value;
  hovering a token shows its id, text and numbers; filters and sorting by return, turns and
  tool use;
- each run's config and summary.

`write_report` is called at the end of every training run (`RunLogger.close`, through
`write_report_or_warn`: a report that cannot be written is a warning, never a failed run) and by
the `textrlhf report` command. The page is written atomically (agents/run/files.py).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from agents.run.config_types import MAX_STEPS
from agents.run.files import atomic_write_text
from agents.run.logger import read_metrics
from agents.run.trajectories import TRAJECTORIES

REPORT = "report.html"

# chart panels, in order: (title, metric keys); then every diagnostics/*, eval/* and episode/*
# metric that no panel names gets its own panel
PANELS = (
    ("return", ("rollout/ep_return", "eval/return")),
    ("KL to reference (per episode)", ("kl/kl_to_ref",)),
    ("beta", ("kl/beta",)),
    ("entropy", ("train/entropy",)),
    ("value loss", ("train/value_loss",)),
    ("policy loss", ("train/policy_loss",)),
    ("approx KL (update)", ("train/approx_kl",)),
    ("clip fraction", ("train/clipfrac",)),
    ("episode length", ("rollout/ep_length",)),
    ("log-prob drift", ("diagnostics/logprob_drift_max", "diagnostics/logprob_drift_p95")),
    ("entropy at first / last token",
     ("diagnostics/entropy_first_token", "diagnostics/entropy_last_token")),
)  # fmt: skip
EXTRA_PREFIXES = ("diagnostics/", "eval/", "episode/")


def _finite(value: Any) -> Any:
    """JSON-safe: NaN / inf floats become None (strict JSON, as the page parses it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_trajectories(path: Path) -> list[dict[str, Any]]:
    """The records of a trajectories.jsonl; a line that is not a JSON object with `token_ids`
    (a crash cut the last one short) is skipped."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("token_ids"), list):
            records.append(record)
    return records


def load_run(folder: str | Path) -> dict[str, Any]:
    """What the page shows of one run folder: its name, config text, summary, metric columns
    ({key: [[step, value], ...]}) and trajectory records. ValueError for a folder that is not
    a run folder (no metrics.csv and no config.yaml)."""
    folder = Path(folder)
    metrics_file, config_file = folder / "metrics.csv", folder / "config.yaml"
    if not folder.is_dir() or not (metrics_file.is_file() or config_file.is_file()):
        raise ValueError(
            f"{folder} is not a run folder: it has no metrics.csv or config.yaml (a run folder is "
            "what `textrlhf train` prints as 'run folder:')"
        )
    columns: dict[str, list[list[float]]] = {}
    if metrics_file.is_file():
        rows, _ = read_metrics(metrics_file, MAX_STEPS)
        for row in rows:
            for key, value in row.items():
                if key == "step" or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    columns.setdefault(key, []).append([row["step"], value])
    summary: Any = None
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = "(summary.json could not be read)"
    config = config_file.read_text(encoding="utf-8") if config_file.is_file() else ""
    return {
        "name": folder.resolve().name,
        "path": str(folder.resolve()),
        "config": config,
        "summary": summary,
        "metrics": columns,
        "episodes": read_trajectories(folder / TRAJECTORIES),
    }


def panels(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The chart panels that have data in any run: PANELS, then one per other diagnostics,
    eval and episode metric."""
    keys = {k for run in runs for k in run["metrics"]}
    out = [(title, [k for k in ks if k in keys]) for title, ks in PANELS]
    out = [(title, ks) for title, ks in out if ks]
    named = {k for _, ks in PANELS for k in ks}
    for prefix in EXTRA_PREFIXES:
        out += [(k, [k]) for k in sorted(keys) if k.startswith(prefix) and k not in named]
    return out


def render(runs: list[dict[str, Any]]) -> str:
    """The report page of `runs` (as `load_run` gives them): one HTML string."""
    data = {"runs": runs, "panels": panels(runs)}
    payload = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    # inside <script type="application/json">: no "</script>" or "<!--" may appear
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = " vs ".join(run["name"] for run in runs)
    escaped = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        PAGE.replace("__TITLE__", escaped)
        .replace("__STYLE__", STYLE)
        .replace("__SCRIPT__", SCRIPT)
        .replace("__DATA__", payload)
    )


def write_report(runs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of the run folders `runs` (the first one's report.html unless `out`),
    atomically. Returns the file written."""
    if not runs:
        raise ValueError("report needs at least one run folder")
    loaded = [load_run(folder) for folder in runs]
    path = Path(out) if out is not None else Path(runs[0]) / REPORT
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the path of the .html file to write")
    atomic_write_text(path, render(loaded))
    return path


def write_report_or_warn(run_dir: Path) -> Path | None:
    """`write_report` of one run at the end of training: any error is one warning line on
    stderr (the run itself succeeded), never an exception."""
    try:
        return write_report([run_dir])
    except Exception as err:  # any error: the report must never fail a run
        print(
            f"textrlhf: warning: could not write {Path(run_dir) / REPORT}: "
            f"{type(err).__name__}: {err}; the run folder is complete, and `textrlhf report "
            f"{run_dir}` tries again",
            file=sys.stderr,
            flush=True,
        )
        return None


# ----------------------------------------------------------------------------- the page

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>textrlhf report: __TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<header><h1>textrlhf report: __TITLE__</h1><nav><a href="#curves">curves</a>
<a href="#viewer">episodes</a> <a href="#runs">config and summary</a></nav></header>
<section id="curves"><h2>Curves</h2><div id="legend"></div><div id="charts"></div></section>
<section id="viewer"><h2>Episodes</h2>
<div class="controls">
<label>run <select id="run-select"></select></label>
<label>colour by <select id="colour">
<option value="who">who wrote it</option><option value="logprob">log-prob</option>
<option value="kl">KL to reference</option><option value="advantage">advantage</option>
<option value="value">value</option></select></label>
<label>split <select id="split"><option value="any">any</option>
<option value="train">training rollouts</option><option value="eval">held-out evaluations</option>
</select></label>
<label>tool use <select id="tool"><option value="any">any</option>
<option value="yes">used a tool</option><option value="no">no tool</option></select></label>
<label>turns <select id="turns"><option value="any">any</option></select></label>
<label>return &ge; <input id="min-return" type="number" step="any" size="6"></label>
<label>text <input id="search" type="search" size="12"></label>
<label>sort <select id="sort">
<option value="iteration">iteration</option>
<option value="return-desc">return, highest first</option>
<option value="return-asc">return, lowest first</option><option value="turns">turns</option>
<option value="tools">tool calls</option></select></label>
</div>
<div id="scale"></div>
<div id="episodes"></div>
</section>
<section id="runs"><h2>Config and summary</h2><div id="run-details"></div></section>
<div id="tip" role="tooltip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
nav a { margin-right: 1em; }
#charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { border: 1px solid #eee; padding: 4px; }
.chart text { font-size: 10px; fill: #555; }
.chart .title { font-size: 12px; fill: #222; }
.chart path.line { fill: none; stroke-width: 1.5; }
#legend span { margin-right: 1.5em; white-space: nowrap; }
#legend i, #scale i { display: inline-block; width: 14px; height: 10px; margin-right: 4px; }
.controls label { margin-right: 1em; white-space: nowrap; }
.controls { margin-bottom: 0.5em; }
.episode { border: 1px solid #ddd; border-radius: 4px; margin: 8px 0; padding: 6px 8px; }
.episode .head { font-size: 12px; color: #555; margin-bottom: 4px; }
.tokens { font: 13px/1.9 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
.tok { padding: 1px 0; border-radius: 2px; cursor: default; }
.tok.env { outline: 1px dashed #c06000; }
.tok:hover { outline: 2px solid #000; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888;
  padding: 6px 8px; font: 12px/1.4 ui-monospace, monospace; white-space: pre;
  pointer-events: none; z-index: 10; box-shadow: 0 2px 6px rgba(0,0,0,.2); }
details pre { background: #f6f6f6; padding: 8px; overflow: auto; max-height: 30em; }
.muted { color: #888; }
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const WHO_COLOURS = { prompt: "#e4e4e4", agent: "#cfe3ff", env: "#ffd08a" };
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(x) {
  if (x === null || x === undefined) return "-";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e4 || a < 1e-3 ? x.toExponential(2) : String(+x.toPrecision(4));
}

// ------------------------------------------------------------------ curves (SVG line charts)
function tick(v, span) {  // enough digits to tell the ticks of a narrow range apart
  if (v === 0 || span <= 0 || Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3) return fmt(v);
  const digits = Math.max(3, Math.ceil(Math.log10(Math.abs(v) / span)) + 2);
  return String(+v.toPrecision(Math.min(digits, 10)));
}
function chart(title, keys) {
  const W = 340, H = 200, L = 58, R = 10, T = 22, B = 28;
  const lines = [];
  DATA.runs.forEach((run, r) => keys.forEach((key, k) => {
    const pts = run.metrics[key];
    if (pts && pts.length) lines.push({ pts, colour: RUN_COLOURS[r % RUN_COLOURS.length],
                                        dash: k ? "4 3" : "", label: run.name + " " + key });
  }));
  const xs = lines.flatMap(l => l.pts.map(p => p[0]));
  const ys = lines.flatMap(l => l.pts.map(p => p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  const svg = svgEl("svg", { width: W, height: H, class: "chart", "data-title": title });
  const label = svgEl("text", { x: L, y: 14, class: "title" });
  label.textContent = title;
  svg.appendChild(label);
  svg.appendChild(svgEl("path", { d: `M${L} ${T}V${H - B}H${W - R}`, stroke: "#999",
                                  fill: "none" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    const t = svgEl("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" });
    t.textContent = tick(v, y1 - y0);
    svg.appendChild(t);
  }
  for (const [v, anchor] of [[x0, "start"], [x1, "end"]]) {
    const t = svgEl("text", { x: sx(v), y: H - B + 14, "text-anchor": anchor });
    t.textContent = fmt(v);
    svg.appendChild(t);
  }
  const steps = svgEl("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" });
  steps.textContent = "env steps";
  svg.appendChild(steps);
  for (const line of lines) {
    const d = line.pts.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " +
                                     sy(p[1]).toFixed(1)).join("");
    const path = svgEl("path", { d, class: "line", stroke: line.colour,
                                 "stroke-dasharray": line.dash });
    const tip = svgEl("title");
    tip.textContent = line.label;
    path.appendChild(tip);
    svg.appendChild(path);
    if (line.pts.length === 1) {
      const p = line.pts[0];
      svg.appendChild(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5,
                                        fill: line.colour }));
    }
  }
  return svg;
}

function drawCurves() {
  const legend = document.getElementById("legend");
  DATA.runs.forEach((run, r) => {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = RUN_COLOURS[r % RUN_COLOURS.length];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(run.name));
    legend.appendChild(item);
  });
  legend.appendChild(el("span", { class: "muted" },
                        "second key of a panel: dashed (e.g. eval/return, drift p95)"));
  const charts = document.getElementById("charts");
  if (!DATA.panels.length) charts.appendChild(el("p", { class: "muted" }, "no metrics logged"));
  for (const [title, keys] of DATA.panels) charts.appendChild(chart(title, keys));
}

// ------------------------------------------------------------------ the episode viewer
function who(ep, i) {
  if (i < ep.prompt_length) return "prompt";
  return ep.from_env[i] ? "env" : "agent";
}
function at(column, i) {  // a per-token list may be null (e.g. no reference, an evaluation)
  return column && column[i] !== undefined ? column[i] : null;
}
function tokenNumbers(ep, i) {
  const lp = at(ep.logprobs, i), ref = at(ep.ref_logprobs, i);
  return { logprob: lp, ref, kl: lp !== null && ref !== null ? lp - ref : null,
           advantage: at(ep.advantages, i), value: at(ep.values, i), reward: at(ep.rewards, i) };
}
function info(ep, key) { return ep.info && typeof ep.info[key] === "number" ? ep.info[key] : null; }
function turnsOf(ep) { return info(ep, "n_turns") ?? 1; }
function toolsOf(ep) { return info(ep, "n_tool_calls") ?? 0; }

function scaleFor(mode, episodes) {
  if (mode === "who") return null;
  const vals = [];
  for (const ep of episodes) for (let i = 0; i < ep.token_ids.length; i++) {
    const v = tokenNumbers(ep, i)[mode];
    if (v !== null) vals.push(v);
  }
  if (!vals.length) return { lo: 0, hi: 0, empty: true };
  const lo = Math.min(...vals), hi = Math.max(...vals);
  return { lo, hi, diverging: mode !== "logprob" };
}
function colourOf(mode, scale, ep, i) {
  if (mode === "who" || scale.empty) return WHO_COLOURS[who(ep, i)];
  const v = tokenNumbers(ep, i)[mode];
  if (v === null) return "#f4f4f4";
  if (!scale.diverging) {  // log-prob: red (unlikely) to white (likely)
    const t = scale.hi > scale.lo ? (v - scale.lo) / (scale.hi - scale.lo) : 1;
    return `rgb(255, ${Math.round(120 + 135 * t)}, ${Math.round(120 + 135 * t)})`;
  }
  const m = Math.max(Math.abs(scale.lo), Math.abs(scale.hi)) || 1;
  const t = Math.min(Math.abs(v) / m, 1);
  const c = Math.round(255 - 150 * t);
  return v >= 0 ? `rgb(${c}, ${c}, 255)` : `rgb(255, ${c}, ${c})`;
}
function drawScale(mode, scale) {
  const box = document.getElementById("scale");
  box.textContent = "";
  const swatch = (colour, text) => {
    const item = el("span");
    const i = el("i");
    i.style.background = colour;
    item.appendChild(i);
    item.appendChild(document.createTextNode(text + "  "));
    box.appendChild(item);
  };
  if (mode === "who" || scale.empty) {
    swatch(WHO_COLOURS.prompt, "prompt");
    swatch(WHO_COLOURS.agent, "agent");
    swatch(WHO_COLOURS.env, "environment (dashed outline in every mode)");
    if (scale && scale.empty) {
      box.appendChild(el("span", { class: "muted" }, " (no " + mode + " logged)"));
    }
    return;
  }
  if (scale.diverging) {
    swatch("rgb(255,105,105)", "negative, down to " + fmt(scale.lo));
    swatch("rgb(105,105,255)", "positive, up to " + fmt(scale.hi));
  } else {
    swatch("rgb(255,120,120)", "least likely " + fmt(scale.lo));
    swatch("rgb(255,255,255)", "most likely " + fmt(scale.hi));
  }
  swatch("#f4f4f4", "no number (prompt / environment)");
}

function showTip(event, ep, i) {
  const n = tokenNumbers(ep, i);
  const lines = [
    `token id   ${ep.token_ids[i]}`,
    `text       ${JSON.stringify(ep.token_text ? ep.token_text[i] : null)}`,
    `written by ${who(ep, i)}`,
    `position   ${i}`,
  ];
  if (n.logprob !== null) {
    lines.push(`log-prob   ${fmt(n.logprob)}  (p ${fmt(Math.exp(n.logprob))})`);
    if (n.ref !== null) lines.push(`ref log-prob ${fmt(n.ref)}`, `KL (k1)    ${fmt(n.kl)}`);
    lines.push(`value      ${fmt(n.value)}`);
    if (n.advantage !== null) lines.push(`advantage  ${fmt(n.advantage)}`);
    lines.push(`reward     ${fmt(n.reward)}`);
  }
  const tip = document.getElementById("tip");
  tip.textContent = lines.join("\n");
  tip.style.display = "block";
  tip.style.left = Math.min(event.clientX + 12, window.innerWidth - 260) + "px";
  tip.style.top = (event.clientY + 14) + "px";
}
function hideTip() { document.getElementById("tip").style.display = "none"; }

function tokenText(ep, i) {
  const text = ep.token_text ? ep.token_text[i] : "#" + ep.token_ids[i] + " ";
  return text.replace(/\n/g, "\u21b5\n");
}

function episodeCard(ep, mode, scale) {
  const card = el("div", { class: "episode " + (ep.split || "train") });
  const split = ep.split === "eval" ? "held-out evaluation" : "training rollout";
  const head = [split, `iteration ${ep.iteration}`, `policy version ${ep.policy_version}`,
                `return ${fmt(ep.return)}`, `${ep.length} agent tokens`,
                `turns ${turnsOf(ep)}`, `tool calls ${toolsOf(ep)}`];
  if (ep.info && ep.info.reference !== undefined) {
    head.push(`reference ${JSON.stringify(ep.info.reference)}`);
  }
  card.appendChild(el("div", { class: "head" }, head.join(" \u00b7 ")));
  const tokens = el("div", { class: "tokens" });
  for (let i = 0; i < ep.token_ids.length; i++) {
    const w = who(ep, i);
    const span = el("span", { class: "tok " + w, "data-i": i, "data-who": w }, tokenText(ep, i));
    span.style.background = colourOf(mode, scale, ep, i);
    span.addEventListener("mouseenter", e => showTip(e, ep, i));
    span.addEventListener("mousemove", e => showTip(e, ep, i));
    span.addEventListener("mouseleave", hideTip);
    tokens.appendChild(span);
  }
  card.appendChild(tokens);
  return card;
}

const SORTS = {
  "iteration": (a, b) => a.step - b.step || (a.split === "eval") - (b.split === "eval"),
  "return-desc": (a, b) => (b.return ?? -Infinity) - (a.return ?? -Infinity),
  "return-asc": (a, b) => (a.return ?? Infinity) - (b.return ?? Infinity),
  "turns": (a, b) => turnsOf(b) - turnsOf(a),
  "tools": (a, b) => toolsOf(b) - toolsOf(a),
};

function drawEpisodes() {
  const run = DATA.runs[+document.getElementById("run-select").value] || DATA.runs[0];
  const mode = document.getElementById("colour").value;
  const split = document.getElementById("split").value;
  const tool = document.getElementById("tool").value;
  const turns = document.getElementById("turns").value;
  const minReturn = parseFloat(document.getElementById("min-return").value);
  const search = document.getElementById("search").value.toLowerCase();
  let episodes = run.episodes.filter(ep =>
    (split === "any" || ep.split === split) &&
    (tool === "any" || (tool === "yes") === (toolsOf(ep) > 0)) &&
    (turns === "any" || turnsOf(ep) === +turns) &&
    (isNaN(minReturn) || (ep.return ?? -Infinity) >= minReturn) &&
    (!search || ((ep.prompt || "") + (ep.response || "")).toLowerCase().includes(search)));
  episodes = episodes.slice().sort(SORTS[document.getElementById("sort").value]);
  const scale = scaleFor(mode, episodes);
  drawScale(mode, scale);
  const box = document.getElementById("episodes");
  box.textContent = "";
  box.appendChild(el("p", { class: "muted" },
    `${episodes.length} of ${run.episodes.length} logged episodes of ${run.name}` +
    (run.episodes.length ? "" : " (a text run logs them in trajectories.jsonl)")));
  for (const ep of episodes) box.appendChild(episodeCard(ep, mode, scale));
}

function setupViewer() {
  const select = document.getElementById("run-select");
  DATA.runs.forEach((run, r) => select.appendChild(el("option", { value: r }, run.name)));
  const turns = new Set();
  DATA.runs.forEach(run => run.episodes.forEach(ep => turns.add(turnsOf(ep))));
  const turnSelect = document.getElementById("turns");
  [...turns].sort((a, b) => a - b)
    .forEach(t => turnSelect.appendChild(el("option", { value: t }, t)));
  for (const id of ["run-select", "colour", "split", "tool", "turns", "sort"]) {
    document.getElementById(id).addEventListener("change", drawEpisodes);
  }
  for (const id of ["min-return", "search"]) {
    document.getElementById(id).addEventListener("input", drawEpisodes);
  }
  drawEpisodes();
}

function drawRuns() {
  const box = document.getElementById("run-details");
  for (const run of DATA.runs) {
    box.appendChild(el("h3", {}, run.name));
    box.appendChild(el("p", { class: "muted" }, run.path));
    const config = el("details", { open: "" });
    config.appendChild(el("summary", {}, "config.yaml"));
    config.appendChild(el("pre", {}, run.config || "(none)"));
    box.appendChild(config);
    const summary = el("details", { open: "" });
    summary.appendChild(el("summary", {}, "summary.json"));
    summary.appendChild(el("pre", {}, run.summary === null ? "(none yet)" :
                                      JSON.stringify(run.summary, null, 2)));
    box.appendChild(summary);
  }
}

drawCurves();
setupViewer();
drawRuns();
"""
