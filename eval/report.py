"""What an evaluation leaves behind: results.json, samples.jsonl, two plots and a terminal table.

results.json is described by eval/results.schema.json (and eval/README.md). Every file is
written beside its target and renamed into place, results.json last: a reader never sees half a
file, and results.json present means the evaluation finished.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

from eval.metrics import METRICS
from train.files import write_bytes_atomic, write_json_atomic, write_text_atomic

RESULTS_VERSION = 1
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
LOSS_PLOT = "loss_curves.png"
METRICS_PLOT = "metrics.png"
# A fine-tune that stops in fewer generations than this is flagged (pitfalls.md #1).
LOW_STOP_RATE = 0.5


def delta(base: Optional[float], finetune: Optional[float]) -> Optional[float]:
    return None if base is None or finetune is None else finetune - base


def compare(base: dict[str, Any], finetune: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric: {label, base, finetune, delta, higher_is_better}} in METRICS order."""
    table = {}
    for name, (label, higher_is_better) in METRICS.items():
        if name in base or name in finetune:
            b, f = base.get(name), finetune.get(name)
            table[name] = {"label": label, "base": b, "finetune": f, "delta": delta(b, f), "higher_is_better": higher_is_better}
    return table


def compare_harness(base: dict[str, dict[str, float]], finetune: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        task: {metric: {"base": value, "finetune": finetune.get(task, {}).get(metric),
                        "delta": delta(value, finetune.get(task, {}).get(metric))}
               for metric, value in metrics.items()}
        for task, metrics in base.items()
    }


def warnings_for(metrics: dict[str, dict[str, Any]], data: dict[str, Any]) -> list[str]:
    """Problems worth a line in the terminal and a field in results.json."""
    found = []
    stop = metrics.get("stop_rate", {}).get("finetune")
    if stop is not None and stop < LOW_STOP_RATE:
        found.append(
            f"the fine-tune stopped (emitted <|im_end|>) in only {stop:.0%} of generations within max_new_tokens: "
            "check that <|im_end|> is trained and is an eos token at inference (pitfalls.md #1)"
        )
    if data.get("matches_training") is False:
        found.append("the eval data changed since training (its fingerprint differs from run.json's)")
    if data.get("loss_examples", 0) < data.get("examples", 0):
        found.append(f"{data['examples'] - data['loss_examples']} eval conversations kept no assistant token after "
                     f"truncation to data.max_length and are left out of the loss")
    return found


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def write_samples(path: Path, samples: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))


def write_results(path: Path, results: dict[str, Any]) -> None:
    write_json_atomic(path, results)


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


def plot_loss_curves(log_history: list[dict[str, Any]], metrics: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Train loss per logged step, eval loss points from training, and the held-out loss of
    base (dashed) and fine-tune (dotted) measured by this evaluation."""
    # A Figure without pyplot uses the Agg canvas and touches no global backend state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss (training)", color="tab:orange")
    loss = metrics.get("loss", {})
    if loss.get("base") is not None:
        ax.axhline(loss["base"], linestyle="--", color="gray", label=f"base held-out loss {loss['base']:.3f}")
    if loss.get("finetune") is not None:
        ax.axhline(loss["finetune"], linestyle=":", color="tab:green", label=f"fine-tune held-out loss {loss['finetune']:.3f}")
    if not train and not evals:
        ax.text(0.5, 0.5, "no training log in run.json", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_metrics(metrics: dict[str, dict[str, Any]], harness: dict[str, Any], path: Path, title: str) -> None:
    """One small bar pair (base, fine-tune) per metric: the scales differ too much for one axis."""
    from matplotlib.figure import Figure

    panels = [(m["label"], m["base"], m["finetune"]) for name, m in metrics.items() if name != "perplexity"]
    for task, task_metrics in harness.items():
        panels += [(f"{task}\n{metric}", v["base"], v["finetune"]) for metric, v in task_metrics.items()
                   if not metric.endswith("_stderr")]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3 * columns, 2.6 * rows))
    for i, (label, base, finetune) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        values = [base if base is not None else 0.0, finetune if finetune is not None else 0.0]
        bars = ax.bar(["base", "fine-tune"], values, color=["tab:gray", "tab:green"])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.margins(y=0.2)
        ax.tick_params(labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    spec = ".4f" if abs(value) < 1e5 else ".3e"  # a random base's perplexity runs to 1e12
    return format(value, ("+" if signed else "") + spec)


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split()) or "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(results: dict[str, Any]) -> str:
    """metric | base | fine-tune | delta, then harness metrics, samples and warnings."""
    rows = [(m["label"], m["base"], m["finetune"], m["delta"]) for m in results["metrics"].values()]
    for task, task_metrics in results["harness"]["results"].items():
        rows += [(f"{task} {metric}", v["base"], v["finetune"], v["delta"]) for metric, v in task_metrics.items()
                 if not metric.endswith("_stderr")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'base':>10}  {'fine-tune':>10}  {'delta':>10}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{label:<{width}}  {_fmt(b):>10}  {_fmt(f):>10}  {_fmt(d, True):>10}" for label, b, f, d in rows]
    lines += source_table(results)
    for skipped in results["harness"]["skipped"]:
        lines.append(f"harness {skipped['task']}: skipped, {skipped['reason']}")
    for sample in results["samples"]:
        question = sample["prompt"][-1]["content"] if sample["prompt"] else ""
        lines += [
            f"[{sample['index']}] prompt:    {_short(question)}",
            f"    reference: {_short(sample['reference'])}",
            f"    base:      {_short(sample['base']['text'])}",
            f"    fine-tune: {_short(sample['finetune']['text'])}",
        ]
    lines += [f"warning: {w}" for w in results["warnings"]]
    return "\n".join(lines)


def source_table(results: dict[str, Any]) -> list[str]:
    """With several eval sources: each metric of the fine-tune (and its delta against the base)
    on every source beside the total, so a regression on one part of the mixture shows."""
    by_source = results.get("by_source") or {}
    if not by_source:
        return []
    columns = {"total": results["metrics"], **by_source}
    counts = {s["name"]: s["examples"] for s in results["data"].get("sources", [])}
    heads = [f"{name} ({counts[name]})" if name in counts else f"{name} ({results['data']['examples']})" for name in columns]
    rows = []
    for metric, values in results["metrics"].items():
        cells = [columns[name].get(metric, {}) for name in columns]
        rows.append((values["label"], [f"{_fmt(c.get('finetune'))} ({_fmt(c.get('delta'), True)})" if c else "-" for c in cells]))
    label_width = max(len("metric"), *(len(label) for label, _ in rows))
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(heads)]

    def line(label, cells):
        return "  ".join([f"{label:<{label_width}}"] + [f"{c:>{w}}" for c, w in zip(cells, widths)])

    header = line("metric", heads)
    return ["", "per source: fine-tune (delta against the base); examples in brackets", header, "-" * len(header)] + [
        line(label, cells) for label, cells in rows]
