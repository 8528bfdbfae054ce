"""One evaluation of a finished run, top to bottom: check, load, score base and fine-tune, write.

Base and fine-tune are one model in memory: the fine-tune is the PeftModel with its adapter on,
the base is the same model inside `with model.disable_adapter():`. Both are scored on the same
held-out examples, with the same prompts and the same decoding settings:
- held-out loss and perplexity over assistant tokens (training's label mask);
- one generation per example, scored against the reference (exact / normalized match, ROUGE-L,
  chrF), with the stop rate and mean generated length;
- the lm-evaluation-harness tasks in eval.harness, when configured.
Everything that can fail on bad input (the run directory, the overrides, the eval rows, the
harness task names) is checked before any weights are loaded.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from eval import harness
from eval.config import apply_overrides, check_eval_config, load_recipe
from eval.data import EvalSet, fingerprint, load_eval_set
from eval.metrics import generation_metrics
from eval.report import (
    EVAL_DIR, LOSS_PLOT, METRICS_PLOT, RESULTS_FILE, RESULTS_VERSION, SAMPLES_FILE, compare, compare_harness,
    format_table, plot_loss_curves, plot_metrics, warnings_for, write_results, write_samples,
)
from eval.scoring import LossResult, assistant_loss, decoding_settings, encode_for_loss, generate_all, inference_mode
from train.config import EvalConfig, PeftMethod, ScionConfig
from train.console import quiet_console
from train.errors import ScionError
from train.run import package_versions
from train.rundir import ADAPTER_DIR, load_run

VARIANTS = ("base", "finetune")
EVAL_PACKAGES = ["lm_eval", "rouge_score", "sacrebleu", "matplotlib"]

USAGE = "usage: python eval.py run_dir=<run directory> [eval.<key>=<value> ...]"


def preflight(config: ScionConfig) -> None:
    """Checks train.py can run before training, so a bad eval section fails in seconds, not after hours."""
    check_eval_config(config.eval)
    if config.eval.enabled and not config.data.eval and config.data.eval_ratio <= 0:
        raise ScionError("eval.enabled=true needs held-out data: set data.eval or data.eval_ratio, or set eval.enabled=false")
    if config.eval.enabled:
        harness.prepare(config.eval.harness)


# Score the fine-tune with its LoRA merged into the weights (restored afterwards): unmerged, PEFT adds
# two small matmuls per adapted projection (14 per layer with all seven targeted: about 500 for 3B) to
# every decoding step. Merged and unmerged give the same numbers (tests/test_eval.py).
MERGE_FINETUNE = True


@contextmanager
def adapter(model, enabled: bool) -> Iterator[None]:
    """The fine-tune (merged where it can be, `merged_adapter`), or the base: the same weights with the adapter off."""
    if not enabled:
        with model.disable_adapter():
            yield
    elif MERGE_FINETUNE and can_merge(model):
        with merged_adapter(model):
            yield
    else:
        yield


def can_merge(model) -> bool:
    """Merging is exact for bf16/fp32 weights; a 4/8-bit base would be dequantised and requantised (lossy),
    and a saved copy of the adapted weights must fit next to the model on the GPU."""
    import torch

    inner = model.get_base_model()
    if getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False):
        return False
    device = next(model.parameters()).device
    if device.type == "cuda":
        needed = sum(m.get_base_layer().weight.nbytes for m in _lora_layers(model))
        return needed < 0.8 * torch.cuda.mem_get_info(device)[0]
    return True


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def merged_adapter(model) -> Iterator[None]:
    """The LoRA merged into the adapted weights while inside; the exact original weights afterwards.

    Unmerging alone would leave bf16 rounding behind (W + BA - BA != W), so the adapted weights are
    copied first (on their own device: no trip through host memory) and written back.
    """
    layers = _lora_layers(model)
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
        for layer, weight in zip(layers, saved):
            layer.get_base_layer().weight.data.copy_(weight)


def load_run_model(run_dir: Path, recipe: ScionConfig):
    """The base as training loaded it (dtype, 4-bit for QLoRA, attention and fused kernels) with the run's
    adapter on top; on a GPU the weights load straight onto it (no copy through host memory)."""
    import torch
    from peft import PeftModel

    from train.console import peft_wrapping
    from train.model import load_model, load_tokenizer, resolve_base

    base = resolve_base(recipe.model)
    tokenizer = load_tokenizer(base, recipe.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(base, recipe.model, recipe.peft, recipe.trainer.precision, device)
    with peft_wrapping():
        return PeftModel.from_pretrained(model, run_dir / ADAPTER_DIR), tokenizer


def data_summary(eval_set: EvalSet, run: dict[str, Any], max_examples: Optional[int], loss_examples: int, loss_tokens: int) -> dict[str, Any]:
    run_sources = run.get("data", {}).get("sources", [])
    trained = {s.get("name"): s for s in run_sources if s.get("role") == "eval"}
    single = next(iter(trained.values()), None) if len(trained) == 1 else None  # run.json before mixtures: no names
    checks = []
    for source in eval_set.sources:
        then = trained.get(source.get("name")) or (single if len(eval_set.sources) == 1 else None)
        then_print = then and fingerprint(then, run_sources)
        checks.append(None if not then_print else then_print == (source.get("sha256") or source.get("fingerprint")))
    matches = None if None in checks else all(checks)
    summary = {
        **eval_set.source,
        "examples": len(eval_set.examples),
        "available": eval_set.available,
        "max_examples": max_examples,
        "loss_examples": loss_examples,
        "loss_tokens": loss_tokens,
        "matches_training": matches,
    }
    if len(eval_set.sources) > 1:
        counts = {name: sum(e.source == name for e in eval_set.examples) for name in source_names(eval_set)}
        summary["sources"] = [{**s, "examples": counts[s["name"]]} for s in eval_set.sources]
    return summary


def source_names(eval_set: EvalSet) -> list[str]:
    """The eval sources in config order; one name (or none) means there is no per-source table."""
    return [s["name"] for s in eval_set.sources]


def score(model, tokenizer, eval_set: EvalSet, encoded, cfg: EvalConfig, plan, variant: str) -> dict[str, Any]:
    """Loss, generations, generation metrics and harness results of one variant.

    `encoded` maps each source name to its conversations encoded for the loss. With several
    sources, every metric is also computed on each source's examples alone ("by_source"); the
    total loss is the token-weighted mean of the sources' losses, as if computed at once.
    """
    started = time.time()
    label = "base" if variant == "base" else "fine-tune"
    losses = {name: assistant_loss(model, rows, tokenizer.pad_token_id, cfg.batch_size, desc=f"loss {label} {name}")
              for name, rows in encoded.items() if rows}
    loss = combine_losses(list(losses.values()))
    generations = generate_all(model, tokenizer, [e.prompt for e in eval_set.examples], cfg, desc=f"generate {label}")
    metrics, per_example = generation_metrics(generations, [e.reference for e in eval_set.examples])
    by_source = {}
    if len(encoded) > 1:
        for name in encoded:
            picked = [i for i, e in enumerate(eval_set.examples) if e.source == name]
            if not picked:
                continue
            part, _ = generation_metrics([generations[i] for i in picked], [eval_set.examples[i].reference for i in picked])
            part_loss = losses.get(name)
            by_source[name] = {"loss": part_loss.loss if part_loss else None,
                               "perplexity": part_loss.perplexity if part_loss else None, **part}
    scored = time.time()
    harness_results = harness.run(plan, model, tokenizer, cfg) if plan and plan.tasks else {}
    return {
        "metrics": {"loss": loss.loss, "perplexity": loss.perplexity, **metrics},
        "by_source": by_source,
        "loss": loss,
        "generations": generations,
        "per_example": per_example,
        "harness": harness_results,
        "seconds": round(scored - started, 2),
        "harness_seconds": round(time.time() - scored, 2),
    }


def combine_losses(losses: list[LossResult]) -> LossResult:
    """The loss over all tokens of several parts: each part's mean weighted by its token count."""
    if len(losses) == 1:
        return losses[0]
    tokens = sum(part.tokens for part in losses)
    loss = sum(part.loss * part.tokens for part in losses) / max(tokens, 1)
    return LossResult(loss=loss, perplexity=math.exp(loss) if loss < 700 else None, tokens=tokens,
                      examples=sum(part.examples for part in losses))


def samples(eval_set: EvalSet, scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, example in enumerate(eval_set.examples):
        row = {"index": example.index, "where": example.where, "prompt": example.prompt, "reference": example.reference}
        for variant in VARIANTS:
            row[variant] = {**asdict(scores[variant]["generations"][i]), **scores[variant]["per_example"][i]}
        rows.append(row)
    return rows


def build_results(run_dir: Path, run: dict[str, Any], recipe: ScionConfig, cfg: EvalConfig, eval_set: EvalSet, plan,
                  scores: dict[str, dict[str, Any]], tokenizer, all_samples: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's content (schema: eval/results.schema.json); timings.total_seconds is set by the caller."""
    loss = scores["finetune"]["loss"]
    data = data_summary(eval_set, run, cfg.max_examples, loss.examples, loss.tokens)
    metrics = compare(scores["base"]["metrics"], scores["finetune"]["metrics"])
    return {
        "scion_eval_version": RESULTS_VERSION,
        "run_dir": str(run_dir),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": run.get("base", {"name_or_path": recipe.model.name_or_path}),
        "adapter": {"path": ADAPTER_DIR, **run.get("peft", {"method": recipe.peft.method.value})},
        "data": data,
        "decoding": decoding_settings(cfg, tokenizer),
        "metrics": metrics,
        "by_source": {name: compare(scores["base"]["by_source"][name], scores["finetune"]["by_source"][name])
                      for name in scores["finetune"]["by_source"]},
        "harness": {
            "tasks": list(cfg.harness.tasks),
            "settings": harness.settings(cfg.harness) if plan else None,
            "results": compare_harness(scores["base"]["harness"], scores["finetune"]["harness"]),
            "skipped": plan.skipped if plan else [],
        },
        "samples": all_samples[: cfg.num_samples],
        "warnings": warnings_for(metrics, data),
        "files": {"samples": SAMPLES_FILE, "loss_curves": LOSS_PLOT, "metrics_plot": METRICS_PLOT},
        "versions": package_versions(tuple(EVAL_PACKAGES)),
        "timings": {
            "base_seconds": scores["base"]["seconds"],
            "finetune_seconds": scores["finetune"]["seconds"],
            "harness_seconds": round(scores["base"]["harness_seconds"] + scores["finetune"]["harness_seconds"], 2),
            "total_seconds": None,
        },
    }


def evaluate_run(run_dir, config: EvalConfig | None = None, model=None, tokenizer=None) -> dict:
    """Evaluate a finished run against its base; write <run>/eval/ and return the results dict.

    `config` defaults to the eval section of the run's recipe.yaml. Pass `model` (the trained
    PeftModel still in memory, as train.run.train returns it) and `tokenizer` to skip reloading;
    the model's train/eval mode and use_cache are restored afterwards.
    """
    started = time.time()

    # ---- Check everything that can be wrong before loading any weights.
    run_dir = Path(run_dir).expanduser()
    run = load_run(run_dir)
    recipe = load_recipe(run_dir)
    cfg = config if config is not None else recipe.eval
    check_eval_config(cfg)
    eval_set = load_eval_set(recipe, cfg.max_examples)
    plan = harness.prepare(cfg.harness)
    if model is not None and not hasattr(model, "disable_adapter"):
        raise ScionError("evaluate_run: model must be the trained PeftModel (base and fine-tune are told apart by its adapter)")

    # ---- Model (reused when given) and the eval conversations with training's label mask.
    if model is None:
        model, tokenizer = load_run_model(run_dir, recipe)
    if tokenizer is None:
        from train.model import load_tokenizer, resolve_base

        tokenizer = load_tokenizer(resolve_base(recipe.model), recipe.model)
    encoded = {name: encode_for_loss([e.messages for e in eval_set.examples if e.source == name],
                                     [e.where for e in eval_set.examples if e.source == name], tokenizer, recipe.data)
               for name in source_names(eval_set)}
    print(f"eval: {len(eval_set.examples)} held-out examples from {eval_set.source.get('source')}, "
          f"{'sampling' if cfg.do_sample else 'greedy'}, max_new_tokens={cfg.max_new_tokens}, "
          f"on {next(model.parameters()).device}", flush=True)

    # ---- Score the base (adapter off) and the fine-tune (adapter on), same inputs, same settings.
    scores = {}
    with inference_mode(model):
        for variant in VARIANTS:
            with adapter(model, enabled=variant == "finetune"):
                scores[variant] = score(model, tokenizer, eval_set, encoded, cfg, plan, variant)

    # ---- Files: samples and plots first, results.json last (its presence marks a finished evaluation).
    all_samples = samples(eval_set, scores)
    results = build_results(run_dir, run, recipe, cfg, eval_set, plan, scores, tokenizer, all_samples)
    out = run_dir / EVAL_DIR
    title = f"{run.get('recipe', recipe.recipe_name)}: {run_dir.name}"
    write_samples(out / SAMPLES_FILE, all_samples)
    plot_loss_curves(run.get("log_history", []), results["metrics"], out / LOSS_PLOT, title)
    plot_metrics(results["metrics"], results["harness"]["results"], out / METRICS_PLOT, title)
    results["timings"]["total_seconds"] = round(time.time() - started, 2)
    write_results(out / RESULTS_FILE, results)
    print(format_table(results), flush=True)
    print(f"eval: results in {out / RESULTS_FILE} ({results['timings']['total_seconds']:.0f}s)", flush=True)
    return results


def parse_args(argv: list[str]) -> tuple[Path, list[str]]:
    run_dir, overrides = None, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "run_dir" and sep:
            run_dir = Path(value)
        else:
            overrides.append(arg)
    if run_dir is None:
        raise ScionError(f"run_dir: missing; {USAGE}")
    return run_dir, overrides


def main(argv: list[str] | None = None) -> int:
    """Entry from eval.py: one-line error and exit code 2 on bad input."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    try:
        run_dir, overrides = parse_args(args)
        load_run(run_dir)
        recipe = load_recipe(run_dir)
        quiet_console(quantized_on_cpu=recipe.peft.method == PeftMethod.qlora)
        config = apply_overrides(recipe.eval, overrides)
        evaluate_run(run_dir, config)
    except ScionError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    from report.html import write_report

    print(f"report: {write_report(run_dir)}", flush=True)
    return 0
