"""Render <run>/report.html from what the run directory holds.

Reads run.json and recipe.yaml (always there in a finished run), and when present
eval/results.json, eval/samples.jsonl and publish/lineage.json (what the publisher planned or
published). Sections: summary, loss curves, base against fine-tune, side-by-side samples, lineage,
recipe and versions. Everything from the run or the data is escaped with html.escape.

The page depends only on the run directory's content (no render time, no local paths beyond file
names), so publishing the same run twice uploads the same report and makes no commit.
"""

from __future__ import annotations

import difflib
import json
import re
from html import escape
from pathlib import Path
from typing import Any, Optional

from report.svg import Series, line_chart
from train.files import write_text_atomic
from train.rundir import RECIPE_FILE, RUN_FILE

REPORT_FILE = "report.html"
RESULTS_FILE = "eval/results.json"
SAMPLES_FILE = "eval/samples.jsonl"
LINEAGE_FILE = "publish/lineage.json"
SAMPLE_LIMIT = 200  # rows shown; the rest stay in samples.jsonl
KIND_ORDER = ("adapter", "merged", "gguf")


def write_report(run_dir: str | Path) -> Path:
    """Render the report of a finished run to <run>/report.html (atomically); returns its path."""
    run_dir = Path(run_dir)
    page = render_report(
        run=json.loads((run_dir / RUN_FILE).read_text()),
        recipe_text=(run_dir / RECIPE_FILE).read_text(),
        results=_read_json(run_dir / RESULTS_FILE),
        samples=_read_jsonl(run_dir / SAMPLES_FILE),
        lineage=_read_json(run_dir / LINEAGE_FILE),
        title=f"{run_dir.name}",
    )
    path = run_dir / REPORT_FILE
    write_text_atomic(path, page)
    return path


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def render_report(run: dict, recipe_text: str, results: Optional[dict], samples: list[dict],
                  lineage: Optional[dict], title: str) -> str:
    recipe = run.get("recipe") or "run"
    body = [
        f'<header><h1>Scion run report</h1><p class="sub">recipe <b>{escape(recipe)}</b> · run '
        f'<code>{escape(title)}</code> · finished {escape(str(run.get("timings", {}).get("finished_at", "?")))}</p></header>',
        section("Summary", "summary", summary(run, results)),
        section("Loss curves", "curves", loss_curves(run, results)),
        section("Base against fine-tune", "metrics", metrics_table(results)),
        section("Samples", "samples", samples_table(samples, results)),
        section("Lineage", "lineage", lineage_table(run, lineage)),
        section("Recipe", "recipe", f"<p>The fully resolved config (<code>{RECIPE_FILE}</code>); "
                f"<code>python train.py recipe=path/to/{RECIPE_FILE}</code> runs it again.</p>"
                f"<pre>{escape(recipe_text)}</pre>"),
        section("Versions", "versions", versions_table(run, results)),
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Scion report: {escape(recipe)} {escape(title)}</title><style>{CSS}</style></head>"
            f'<body><main>{"".join(body)}</main></body></html>\n')


def section(heading: str, anchor: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(heading)}</h2>{content}</section>'


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def source_name(source: dict) -> str:
    """A Hub dataset id as is; a local file by its name only (no paths of this machine in a report)."""
    local = "sha256" in source or "split_from_train" in source
    return Path(str(source.get("source", "?"))).name if local else str(source.get("source", "?"))


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def card(label: str, value: str, detail: str = "") -> str:
    return f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div><div class="detail">{detail}</div></div>'


def summary(run: dict, results: Optional[dict]) -> str:
    base, peft, metrics = run.get("base", {}), run.get("peft", {}), run.get("metrics", {})
    timings = run.get("timings", {})
    revision = base.get("commit_sha") or base.get("revision")
    revision_text = f"revision <code>{escape(revision[:12])}</code>" if revision else "revision: unpinned"
    name = base.get("hub_id") or base.get("name_or_path") or "?"
    method = f"{escape(str(peft.get('method', '?')).upper())} r={escape(str(peft.get('r', '?')))} α={escape(str(peft.get('alpha', '?')))}"
    data_lines = []
    stats = run.get("data", {}).get("stats", {})
    for source in run.get("data", {}).get("sources", []):
        role = source.get("role", "?")
        line = f"{escape(source_name(source))} ({escape(role)}): {_count(source.get('rows'))} rows"
        split = stats.get(role, {})
        if split:
            line += f", {_count(split.get('examples'))} examples, {_count(split.get('tokens'))} tokens"
        data_lines.append(line)
    rate = metrics.get("tokens_per_second")
    speed = f"{rate:,.0f}" if isinstance(rate, (int, float)) else "?"
    mfu = metrics.get("mfu")
    cards = [
        card("Base", escape(name), f"{revision_text} · {escape(str(base.get('architecture', '')))}"),
        card("Method", method, escape(", ".join(peft.get("target_modules", [])))),
        card("Data", "<br>".join(data_lines[:1]) or "?", "<br>".join(data_lines[1:])),
        card("Time", escape(duration(timings.get("total_seconds"))),
             f"training {escape(duration(timings.get('train_seconds')))} · started {escape(str(timings.get('started_at', '?')))}"),
        card("Tokens/s", escape(speed), (f"MFU {mfu:.1%} · " if isinstance(mfu, (int, float)) else "")
             + f"{_count(metrics.get('tokens_seen'))} tokens on {escape(str(run.get('device', '?')))}"),
        card("Training", f"{_count(metrics.get('global_step'))} steps",
             f"final train loss {_num(metrics.get('train_loss'))}"
             + (f" · eval loss {_num(metrics.get('eval_loss'))}" if metrics.get("eval_loss") is not None else "")),
    ]
    command = f'<p class="command">Command: <code>{escape(str(run.get("command", "?")))}</code></p>'
    note = "" if results else '<p class="note">No evaluation in this run directory (run <code>python eval.py run_dir=&lt;run&gt;</code>).</p>'
    return f'<div class="cards">{"".join(cards)}</div>{command}{note}'


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value)) if value is not None else "?"


def _num(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "–"
    spec = ".4f" if abs(value) < 1e5 else ".3e"  # a random base's perplexity runs to 1e12
    return format(value, ("+" if signed else "") + spec)


# ---------------------------------------------------------------------------------------------
# Curves and the metric table
# ---------------------------------------------------------------------------------------------
def loss_curves(run: dict, results: Optional[dict]) -> str:
    history = run.get("log_history", [])
    train = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    series = [Series("train loss", train, "#2563eb"), Series("eval loss (during training)", evals, "#ea580c", "points")]
    loss = (results or {}).get("metrics", {}).get("loss", {})
    if loss.get("base") is not None:
        series.append(Series(f"base held-out loss {loss['base']:.3f}", [(0, loss["base"])], "#6b7280", "level"))
    if loss.get("finetune") is not None:
        series.append(Series(f"fine-tune held-out loss {loss['finetune']:.3f}", [(0, loss["finetune"])], "#16a34a", "level"))
    chart = line_chart(series, "optimizer step", "loss (assistant tokens)", "train and eval loss")
    return f'<figure>{chart}<figcaption>Loss per logged step (run.json log_history); dashed: held-out loss ' \
           f'of base and fine-tune measured by the evaluation.</figcaption></figure>'


def delta_class(delta: Optional[float], higher_is_better: Optional[bool]) -> str:
    if delta is None or higher_is_better is None or delta == 0:
        return "same"
    return "better" if (delta > 0) == higher_is_better else "worse"


def metrics_table(results: Optional[dict]) -> str:
    if not results:
        return '<p class="note">Not evaluated: no eval/results.json.</p>'
    rows = []
    for name, m in results.get("metrics", {}).items():
        hib = m.get("higher_is_better")
        direction = {True: "higher is better", False: "lower is better"}.get(hib, "neither")
        rows.append(f'<tr><th scope="row">{escape(m.get("label", name))}<span class="dir">{direction}</span></th>'
                    f'<td>{_num(m.get("base"))}</td><td>{_num(m.get("finetune"))}</td>'
                    f'<td class="delta {delta_class(m.get("delta"), hib)}">{_num(m.get("delta"), True)}</td></tr>')
    for task, task_metrics in results.get("harness", {}).get("results", {}).items():
        for metric, v in task_metrics.items():
            if not metric.endswith("_stderr"):
                rows.append(f'<tr><th scope="row">{escape(task)} {escape(metric)}<span class="dir">lm-eval</span></th>'
                            f'<td>{_num(v.get("base"))}</td><td>{_num(v.get("finetune"))}</td>'
                            f'<td class="delta same">{_num(v.get("delta"), True)}</td></tr>')
    data = results.get("data", {})
    decoding = results.get("decoding", {})
    about = (f'<p>{_count(data.get("examples"))} held-out examples from <code>{escape(source_name(data))}</code>, '
             f'{escape(str(decoding.get("strategy", "?")))} decoding, max_new_tokens={escape(str(decoding.get("max_new_tokens", "?")))}; '
             f'base and fine-tune see the same prompts. Deltas are <span class="delta better">better</span> or '
             f'<span class="delta worse">worse</span> for the fine-tune.</p>')
    skipped = "".join(f'<p class="note">lm-eval {escape(s.get("task", "?"))}: skipped, {escape(s.get("reason", ""))}</p>'
                      for s in results.get("harness", {}).get("skipped", []))
    warnings = "".join(f'<p class="warning">warning: {escape(w)}</p>' for w in results.get("warnings", []))
    return (about + '<table class="metrics"><thead><tr><th>metric</th><th>base</th><th>fine-tune</th><th>delta</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{skipped}{warnings}')


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
def highlight(text: str, reference: str) -> str:
    """`text` escaped, with the words that differ from `reference` marked."""
    if not text.strip():
        return '<span class="empty">(empty)</span>' if not text else '<span class="empty">(whitespace only)</span>'
    words, ref_words = re.split(r"(\s+)", text), re.split(r"(\s+)", reference)
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(None, ref_words, words, autojunk=False).get_opcodes():
        chunk = escape("".join(words[j1:j2]))
        out.append(chunk if op == "equal" else f"<mark>{chunk}</mark>" if chunk.strip() else chunk)
    return "".join(out)


def prompt_cell(prompt: list[dict]) -> str:
    last = prompt[-1] if prompt else {"role": "user", "content": ""}
    text = f'<div class="text">{escape(_content(last))}</div>'
    if len(prompt) > 1:
        turns = "".join(f'<div class="turn"><b>{escape(str(m.get("role", "?")))}</b> {escape(_content(m))}</div>' for m in prompt[:-1])
        text += f'<details><summary>{len(prompt) - 1} earlier message{"s" if len(prompt) > 2 else ""}</summary>{turns}</details>'
    return text


def _content(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def output_cell(output: dict, reference: str) -> str:
    match = bool(output.get("exact_match"))
    badge = '<span class="badge ok">match</span>' if match else '<span class="badge bad">mismatch</span>'
    if not output.get("stopped", True):
        badge += '<span class="badge warn">did not stop</span>'
    return f'<td class="{"match" if match else "mismatch"}"><div class="text">{highlight(str(output.get("text", "")), reference)}</div>{badge}</td>'


def samples_table(samples: list[dict], results: Optional[dict]) -> str:
    if not samples:
        return '<p class="note">No samples: the run was not evaluated.</p>'
    shown = samples[:SAMPLE_LIMIT]
    rows = []
    for s in shown:
        reference = str(s.get("reference", ""))
        rows.append(f'<tr><td class="idx">{escape(str(s.get("index", "")))}</td><td>{prompt_cell(s.get("prompt", []))}</td>'
                    f'<td class="reference"><div class="text">{escape(reference)}</div></td>'
                    f'{output_cell(s.get("base", {}), reference)}{output_cell(s.get("finetune", {}), reference)}</tr>')
    matches = {v: sum(bool(s.get(v, {}).get("exact_match")) for s in samples) for v in ("base", "finetune")}
    intro = (f'<p>{len(shown)} of {len(samples)} held-out examples (all are in <code>{SAMPLES_FILE}</code>). '
             f'Exact matches: base {matches["base"]}, fine-tune {matches["finetune"]}. '
             f'Words that differ from the reference are <mark>marked</mark>.</p>')
    return (intro + '<table class="samples"><thead><tr><th>#</th><th>prompt</th><th>reference</th><th>base</th>'
            f'<th>fine-tune</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


# ---------------------------------------------------------------------------------------------
# Lineage, recipe, versions
# ---------------------------------------------------------------------------------------------
def _license(entry: dict) -> str:
    name = entry.get("license_name") or entry.get("license") or "?"
    link = entry.get("license_link")
    if link and re.match(r"https?://", link):
        return f'<a href="{escape(link)}">{escape(name)}</a>'
    return escape(name)


def _repo(repo_id: str, endpoint: str) -> str:
    return f'<a href="{escape(endpoint.rstrip("/"))}/{escape(repo_id)}">{escape(repo_id)}</a>'


def lineage_table(run: dict, lineage: Optional[dict]) -> str:
    base = run.get("base", {})
    if not lineage:
        name = base.get("hub_id") or base.get("name_or_path") or "?"
        return (f'<ol class="chain"><li><b>{escape(name)}</b> <span class="relation">base</span></li>'
                f'<li><b>adapter/</b> <span class="relation">adapter</span> (in this run directory)</li></ol>'
                '<p class="note">Not published yet: <code>python publish.py run_dir=&lt;run&gt; repo_id=&lt;org/name&gt; '
                'kind=[adapter,merged,gguf] dry_run=true</code> shows the plan.</p>')
    endpoint = lineage.get("endpoint", "https://huggingface.co")
    b = lineage["base"]
    revision = b.get("revision")
    rows = [f'<tr><td><span class="relation">base</span></td><td>{_repo(b["repo_id"], endpoint)}'
            f'{f" <code>{escape(revision[:12])}</code>" if revision else ""}</td><td>–</td><td>{_license(b)}</td><td>–</td></tr>']
    derivatives = sorted(lineage.get("derivatives", []), key=lambda d: KIND_ORDER.index(d["kind"]) if d["kind"] in KIND_ORDER else 9)
    for d in derivatives:
        status = escape(d.get("status", ""))
        if d.get("commit_url"):
            status = f'<a href="{escape(d["commit_url"])}">{status}</a>'
        extra = f' <span class="files">{escape(", ".join(d["files"]))}</span>' if d.get("files") else ""
        rows.append(f'<tr><td><span class="relation">{escape(d["kind"])}</span></td><td>{_repo(d["repo_id"], endpoint)}{extra}</td>'
                    f'<td>{escape(d.get("relation", "?"))} of {escape(d.get("base_model", "?"))}</td>'
                    f'<td>{_license(d)}</td><td>{status}</td></tr>')
    what = "planned in a dry run (nothing uploaded)" if lineage.get("dry_run") else f"published to revision {escape(str(lineage.get('revision', 'main')))}"
    return (f'<p>The chain from the base to every derivative, {what}. Each repo\'s card names its '
            '<code>base_model</code> and <code>base_model_relation</code>; the license is inherited from the base.</p>'
            '<table class="lineage"><thead><tr><th>kind</th><th>repo</th><th>relation</th><th>license</th><th>status</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def versions_table(run: dict, results: Optional[dict]) -> str:
    versions = dict(run.get("versions", {}))
    for name, version in (results or {}).get("versions", {}).items():
        versions.setdefault(name, version)
    speed = run.get("speed", {})
    rows = "".join(f"<tr><th scope=\"row\">{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in sorted(versions.items()))
    settings = "".join(f"<tr><th scope=\"row\">{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in speed.items())
    return (f'<div class="two"><table class="kv"><thead><tr><th>package</th><th>version</th></tr></thead><tbody>{rows}</tbody></table>'
            f'<table class="kv"><thead><tr><th>speed setting</th><th>value</th></tr></thead><tbody>{settings}</tbody></table></div>')


CSS = """
:root { --fg: #111827; --muted: #6b7280; --line: #e5e7eb; --bg: #f9fafb; --accent: #2563eb;
        --good: #15803d; --good-bg: #dcfce7; --bad: #b91c1c; --bad-bg: #fee2e2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0; font-size: 24px; }
.sub { margin: 4px 0 0; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; margin-top: 18px; }
h2 { margin: 0 0 12px; font-size: 17px; }
code, pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { background: #f3f4f6; padding: 1px 4px; border-radius: 4px; }
pre { background: #f3f4f6; padding: 12px 14px; border-radius: 8px; overflow: auto; max-height: 480px; margin: 0; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.cards { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 16px; font-weight: 600; overflow-wrap: anywhere; }
.card .detail { color: var(--muted); font-size: 12.5px; overflow-wrap: anywhere; }
.command { margin: 12px 0 0; overflow-wrap: anywhere; }
.note { color: var(--muted); }
.warning { color: var(--bad); background: var(--bad-bg); padding: 6px 10px; border-radius: 6px; }
figure { margin: 0; } figcaption { color: var(--muted); font-size: 12.5px; }
svg.chart { width: 100%; max-width: 980px; height: auto; display: block; }
svg .grid { stroke: #eef0f3; } svg .frame { fill: none; stroke: #d1d5db; }
svg .tick, svg .legend { font-size: 11px; fill: #374151; } svg .axis { font-size: 12px; fill: var(--muted); }
svg .level { stroke-width: 1.6; stroke-dasharray: 5 4; } svg .note { fill: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
table.metrics { max-width: 720px; } table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics thead th:not(:first-child) { text-align: right; }
.dir { display: block; font-weight: normal; font-size: 11px; color: var(--muted); }
.delta { font-weight: 600; border-radius: 4px; }
.delta.better { color: var(--good); background: var(--good-bg); }
.delta.worse { color: var(--bad); background: var(--bad-bg); }
span.delta { padding: 0 4px; }
table.samples { table-layout: fixed; }
table.samples th:nth-child(1) { width: 44px; } table.samples th:nth-child(2) { width: 30%; }
table.samples .text { white-space: pre-wrap; overflow-wrap: anywhere; }
table.samples tbody tr:nth-child(even) { background: #fcfcfd; }
td.idx { color: var(--muted); font-variant-numeric: tabular-nums; }
td.reference { background: #f8fafc; }
td.match { box-shadow: inset 3px 0 var(--good); } td.mismatch { box-shadow: inset 3px 0 var(--bad); }
mark { background: #fecaca; color: #7f1d1d; border-radius: 3px; padding: 0 1px; }
.empty { color: var(--muted); font-style: italic; }
.badge { display: inline-block; font-size: 11px; border-radius: 10px; padding: 0 7px; margin: 4px 4px 0 0; }
.badge.ok { background: var(--good-bg); color: var(--good); } .badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.warn { background: #fef3c7; color: #92400e; }
details { margin-top: 4px; color: var(--muted); font-size: 12.5px; } summary { cursor: pointer; }
.turn { white-space: pre-wrap; overflow-wrap: anywhere; }
.relation { display: inline-block; background: #eef2ff; color: #3730a3; border-radius: 10px; padding: 0 8px; font-size: 12px; }
ol.chain { padding-left: 20px; } .files { color: var(--muted); font-size: 12px; display: block; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; align-items: start; } table.kv th { width: 45%; }
"""
