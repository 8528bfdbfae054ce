"""Model cards with correct lineage, built with huggingface_hub's ModelCard / ModelCardData.

The YAML front matter is what the Hub reads: `base_model` (always a Hub id, never a path),
`base_model_relation` (always written: adapter / finetune / quantized), the inherited license,
datasets (Hub ids only), pipeline_tag, library_name, tags, and eval results as model-index.
The body says what the model is, how it was trained, how to reproduce it and how to use it.
The card is deterministic for a given run, so publishing the same run again changes nothing.
"""

from __future__ import annotations

from typing import Any, Optional

from publish.license import License
from train.config import DerivativeKind

RELATION = {DerivativeKind.adapter: "adapter", DerivativeKind.merged: "finetune", DerivativeKind.gguf: "quantized"}
LIBRARY = {DerivativeKind.adapter: "peft", DerivativeKind.merged: "transformers", DerivativeKind.gguf: "gguf"}
WHAT = {
    DerivativeKind.adapter: "a LoRA adapter for",
    DerivativeKind.merged: "a fine-tune (LoRA merged into the full weights) of",
    DerivativeKind.gguf: "a GGUF conversion (for llama.cpp) of",
}


def usage_snippet(kind: DerivativeKind, repo_id: str, base_id: str, gguf_files: list[str]) -> str:
    if kind == DerivativeKind.adapter:
        return f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_id}", dtype="auto")
model = PeftModel.from_pretrained(base, "{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], skip_special_tokens=True))
```"""
    if kind == DerivativeKind.merged:
        return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}", dtype="auto")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], skip_special_tokens=True))
```"""
    first = gguf_files[0] if gguf_files else "model.gguf"
    return f"""```bash
# llama.cpp
llama-cli --hf-repo {repo_id} --hf-file {first} -cnv
# or download and run locally
hf download {repo_id} {first} --local-dir .
llama-cli -m {first} -cnv
```"""


def eval_results(results: Optional[dict[str, Any]], model_name: str) -> list:
    """model-index entries (the fine-tune's values) from <run>/eval/results.json."""
    from huggingface_hub import EvalResult

    if not results:
        return []
    data = results.get("data", {})
    if data.get("sources"):  # several eval sources: the results are of the mixture as a whole
        name, hub = "held-out mixture", False
    else:
        name, hub = (source_name(data) if data.get("source") else "held-out split"), is_hub_source(data)
    entries = []
    for metric, values in sorted(results.get("metrics", {}).items()):
        value = values.get("finetune") if isinstance(values, dict) else None
        if value is None:
            continue
        entries.append(EvalResult(
            task_type="text-generation",
            dataset_type=name if hub else "custom",
            dataset_name=name,
            dataset_split=data.get("split"),
            metric_type=metric,
            metric_name=values.get("label", metric),
            metric_value=round(float(value), 6),
        ))
    return entries


def is_hub_source(source: dict[str, Any]) -> bool:
    return "sha256" not in source and "split_from_train" not in source


def source_name(source: dict[str, Any]) -> str:
    """A Hub dataset id as is; a local file by its name only (no paths of this machine in a card)."""
    from pathlib import Path

    return source["source"] if is_hub_source(source) else Path(source["source"]).name


def source_line(s: dict[str, Any]) -> str:
    """One data source in the card: a Hub dataset with its split and pinned commit, a local file
    with its row count and sha256; train sources with their weight and share of the mixture."""
    details = [s.get("role", "train"), f"{s.get('rows', '?')} rows"]
    if "split_from_train" in s:
        details.append(f"held out with eval_ratio {s['split_from_train']}, seed {s.get('seed')}")
    elif is_hub_source(s):
        details.append(f"split `{s.get('split', 'train')}`")
        details.append(f"revision `{s.get('commit') or s.get('revision') or 'main (unpinned)'}`")
    else:
        details.append(f"sha256 `{s['sha256']}`")
    if s.get("max_rows"):
        details.append(f"first {s['max_rows']} rows")
    if s.get("role") == "train" and "share" in s:
        details.append(f"weight {s.get('weight', 1.0):g}, {100 * s['share']:.1f}% of the mixture")
    return f"- `{s.get('name') or source_name(s)}` ({', '.join(details)})"


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def card_tags(kind: DerivativeKind, recipe: dict[str, Any], extra_tags: Optional[list[str]] = None) -> list[str]:
    """The card's tags (also written into GGUF files as general.tags)."""
    tags = ["scion", "qwen", RELATION[kind]]
    if kind == DerivativeKind.adapter:
        tags += ["lora", recipe["peft"]["method"]]
    return tags + [t for t in dict.fromkeys(extra_tags or []) if t not in tags]


def build_card(
    kind: DerivativeKind,
    repo_id: str,
    base_id: str,
    run: dict[str, Any],
    recipe: dict[str, Any],
    license: License,
    results: Optional[dict[str, Any]] = None,
    gguf_files: Optional[list[str]] = None,
    language: Optional[list[str]] = None,
    extra_tags: Optional[list[str]] = None,
    plots: Optional[list[str]] = None,
):
    """The ModelCard for one derivative. `base_id` is the Hub id this derivative is made from."""
    from huggingface_hub import ModelCard, ModelCardData

    base = run["base"]
    hub_datasets = sorted({s["source"] for s in run["data"]["sources"] if is_hub_source(s)})
    tags = card_tags(kind, recipe, extra_tags)
    data = ModelCardData(
        base_model=base_id,
        base_model_relation=RELATION[kind],
        library_name=LIBRARY[kind],
        license=license.license,
        license_name=license.license_name,
        license_link=license.license_link,
        datasets=hub_datasets or None,
        language=language or None,
        pipeline_tag="text-generation",
        tags=tags,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, repo_id.split("/")[-1]) or None,
    )
    t, p, d = recipe["trainer"], recipe["peft"], recipe["data"]
    hyper = _table([
        ("method", p["method"]), ("rank / alpha / dropout", f"{p['r']} / {p['alpha']} / {p['dropout']}"),
        ("target modules", ", ".join(p["target_modules"])), ("learning rate", t["learning_rate"]),
        ("schedule", f"{t['lr_scheduler']}, warmup ratio {t['warmup_ratio']}"),
        ("epochs / max steps", f"{t['epochs']} / {t['max_steps']}"),
        ("batch size x accumulation", f"{t['batch_size']} x {t['gradient_accumulation_steps']}"),
        ("max length / truncation", f"{d['max_length']} / {d['truncation']}"),
        ("precision", t["precision"]), ("seed", t["seed"]),
        ("loss", "assistant tokens only" if d["assistant_only_loss"] else "all tokens"),
    ])
    sources = "\n".join(source_line(s) for s in run["data"]["sources"])
    metrics = run.get("metrics", {})
    versions = ", ".join(f"{k} {v}" for k, v in sorted(run.get("versions", {}).items()))
    eval_section = ""
    if results:
        rows = ["| metric | base | fine-tune | delta |", "|---|---:|---:|---:|"]
        for name, values in sorted(results.get("metrics", {}).items()):
            if isinstance(values, dict) and values.get("finetune") is not None:
                rows.append(f"| {name} | {_fmt(values.get('base'))} | {_fmt(values.get('finetune'))} | {_fmt(values.get('delta'))} |")
        eval_section = "## Evaluation against the base\n\nScored on the same held-out split with the same prompts and decoding.\n\n" + "\n".join(rows) + "\n"
        eval_section += "".join(f"\n![{p}]({p})\n" for p in plots or [])
    revision = base.get("commit_sha") or base.get("revision") or "main (unpinned)"
    made_from = ""  # GGUF of a merged repo: also name the original base
    if kind != DerivativeKind.adapter and base.get("hub_id") and base["hub_id"] != base_id:
        made_from = f"It was made from the base [{base['hub_id']}](https://huggingface.co/{base['hub_id']}) at revision `{revision}`.\n"
    notice = "\nThis repository includes the base's LICENSE and NOTICE files, as its license requires.\n" if license.files else ""
    template_note = ""
    if base.get("chat_template_from"):  # a -Base checkpoint without a template of its own
        template_note = (f"\n- Chat template: the base has none; trained and shipped with the stock template of its "
                         f"instruct models (`{base['chat_template_from']}`)")
    body = f"""
# {repo_id.split('/')[-1]}

This is {WHAT[kind]} [{base_id}](https://huggingface.co/{base_id}), trained with Scion.
{made_from}
- Base model: `{base.get('hub_id')}` at revision `{revision}`
- Relation: `{RELATION[kind]}`
- License: `{license.license_name or license.license}`, inherited from the base{notice}{template_note}

## Usage

{usage_snippet(kind, repo_id, base.get('hub_id') or base_id, gguf_files or [])}

## Training

Trained with `{p['method']}` on:
{sources}

{hyper}

Final train loss {_fmt(metrics.get('train_loss'))}, eval loss {_fmt(metrics.get('eval_loss'))}, {metrics.get('global_step', '?')} steps.

{eval_section}
## Reproduce

{reproduce_section(repo_id, run)}

Framework versions: {versions}.
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)


def reproduce_section(repo_id: str, run: dict[str, Any]) -> str:
    """How to train it again: `recipe=hub:` plus an override for each role whose local files are not published."""
    sources = [s for s in run["data"]["sources"] if "split_from_train" not in s]
    local = [s for s in sources if not is_hub_source(s)]
    command = f"python train.py recipe=hub:{repo_id}"
    for role in dict.fromkeys(s["role"] for s in local):
        entries = [s for s in sources if s["role"] == role]
        if len(entries) == 1:
            command += f" data.{role}=path/to/{source_name(entries[0])}"
        else:  # a mixture: the whole list, in order, with the local files replaced by your copies
            listed = ",".join(source_name(s) if is_hub_source(s) else f"path/to/{source_name(s)}" for s in entries)
            command += f' "data.{role}=[{listed}]"'
    text = "The full resolved recipe is in this repo as `recipe.yaml`. Train it again with\n"
    if local:
        files = ", ".join(f"`{source_name(s)}` (data.{s['role']}, {s.get('rows', '?')} rows, sha256 `{s['sha256'][:16]}…`)"
                          for s in local)
        text = (f"The full resolved recipe is in this repo as `recipe.yaml`. It trained on local files that are not "
                f"published here: {files}. Give your copies on the command line"
                + (" (a list replaces the recipe's whole list: repeat each entry's weight there)" if len(local) < len(sources) or len(local) > 1 else "")
                + ":\n")
    return text + f"```bash\n{command}\n```\nThe original command was `{run.get('command', 'python train.py')}`."


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
