"""Publish a finished run: adapter, merged weights and/or GGUF, each to its own repo with lineage.

    publish_run(run_dir, PublishConfig(repo_id="org/name", kinds=[adapter, merged, gguf]))

1. Preflight, before any network call or heavy work: the run is complete, repo ids are valid, the
   base's Hub id is known (never a local path), its license is known, GGUF supports the arch.
2. Stage each kind's exact upload folder under <run>/publish/<kind>/ (card, recipe.yaml, license
   files, eval results and plots, weights). Only allow-listed files can be staged.
3. Dry run: print the plan and stop. Otherwise push each folder as one commit (publish/push.py).

Repos: the first kind listed goes to `repo_id`; the others to `<repo_id>-merged` / `<repo_id>-GGUF`
unless `merged_repo_id` / `gguf_repo_id` name them.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from publish.card import RELATION, build_card, card_tags
from publish.license import License, read_base_license
from train.config import DerivativeKind, PublishConfig
from train.errors import ScionError
from report.html import LINEAGE_FILE, REPORT_FILE, write_report
from train.files import write_json_atomic
from train.rundir import ADAPTER_DIR, RECIPE_FILE, load_run

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json"]
COMMON_FILES = ["README.md", RECIPE_FILE, REPORT_FILE, "LICENSE", "NOTICE", "eval/results.json", "eval/*.png"]
# Everything a repo may receive; anything else (optimizer state, training_args.bin, .env, ...) is refused.
ALLOWED_FILES = {
    DerivativeKind.adapter: ["adapter_config.json", "adapter_model.safetensors", *TOKENIZER_FILES, *COMMON_FILES],
    DerivativeKind.merged: ["config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                            "model.safetensors.index.json", *TOKENIZER_FILES, *COMMON_FILES,
                            # an image-text-to-text base (Qwen3.5): its processor files, carried over
                            "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"],
    DerivativeKind.gguf: ["*.gguf", *COMMON_FILES],
}
SUFFIX = {DerivativeKind.merged: "-merged", DerivativeKind.gguf: "-GGUF"}


@dataclass
class Target:
    kind: DerivativeKind
    repo_id: str
    base_model: str  # what base_model in this repo's card points at


def check_repo_id(repo_id: Optional[str], key: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise ScionError(f"{key}: missing; give the Hub repo as org/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ScionError(f"{key}: {repo_id!r} is not a valid Hub repo id: {str(e).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise ScionError(f"{key}: {repo_id!r} must be namespaced as org/name")
    return repo_id


def plan_targets(cfg: PublishConfig, base_id: str) -> list[Target]:
    kinds = list(dict.fromkeys(cfg.kinds))  # keep order, drop repeats
    if not kinds:
        raise ScionError("publish.kinds: empty; choose from adapter, merged, gguf")
    repo_id = check_repo_id(cfg.repo_id, "publish.repo_id")
    named = {DerivativeKind.merged: cfg.merged_repo_id, DerivativeKind.gguf: cfg.gguf_repo_id}
    repos = {}
    for i, kind in enumerate(kinds):
        repo = repo_id if i == 0 else named.get(kind) or repo_id + SUFFIX[kind]
        repos[kind] = check_repo_id(repo, f"publish.{kind.value}_repo_id" if kind in named else "publish.repo_id")
    targets = []
    for kind in kinds:
        # GGUF quantizes the merged fine-tune when that is published too, keeping the chain connected.
        base = repos[DerivativeKind.merged] if kind == DerivativeKind.gguf and DerivativeKind.merged in repos else base_id
        targets.append(Target(kind, repos[kind], base))
    return targets


def base_directory(run: dict[str, Any], recipe: dict[str, Any]) -> Path:
    """The base's files: the snapshot used for training, or fetched again at the recorded commit."""
    local = run["base"].get("local_dir")
    if local and Path(local, "config.json").is_file():
        return Path(local)
    from train.config import ModelConfig
    from train.model import resolve_base

    model = ModelConfig(**{**recipe["model"], "revision": run["base"].get("commit_sha") or recipe["model"].get("revision")})
    return Path(resolve_base(model).local_dir)


def allowed(kind: DerivativeKind, rel_path: str) -> bool:
    return any(fnmatch.fnmatchcase(rel_path, pattern) for pattern in ALLOWED_FILES[kind])


def copy_allowed(src: Path, dst: Path, kind: DerivativeKind) -> None:
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if allowed(kind, rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)


def check_staged(folder: Path, kind: DerivativeKind) -> list[tuple[str, int]]:
    """Every staged file is allow-listed; returns (path, size) for the plan."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if not allowed(kind, rel):
            raise ScionError(f"publish: refusing to upload {rel} (not on the {kind.value} allow-list)")
        files.append((rel, path.stat().st_size))
    return files


def stage(target: Target, run_dir: Path, run: dict, recipe: dict, recipe_text: str, license: License,
          base_dir: Path, cfg: PublishConfig, results: Optional[dict]) -> tuple[Path, list[tuple[str, int]]]:
    """Build <run>/publish/<kind>/ exactly as it will be uploaded (staged, then renamed into place).
    Returns the folder and its checked (path, size) list."""
    final = run_dir / "publish" / target.kind.value
    folder = final.with_name(f".{final.name}.partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    gguf_files: list[str] = []
    if target.kind == DerivativeKind.adapter:
        copy_allowed(run_dir / ADAPTER_DIR, folder, target.kind)
        config_path = folder / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = target.base_model  # a Hub id, never a local path
        adapter_config["revision"] = run["base"].get("commit_sha") or adapter_config.get("revision")
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    else:
        merged = merged_weights(run_dir, base_dir)
        if target.kind == DerivativeKind.merged:
            copy_allowed(merged, folder, target.kind)
        else:
            gguf_files = write_gguf(merged, folder, target, run["base"]["hub_id"], license, recipe, cfg)
    (folder / RECIPE_FILE).write_text(recipe_text)
    if (run_dir / REPORT_FILE).is_file():  # rendered with this publish's lineage (publish_run)
        shutil.copy2(run_dir / REPORT_FILE, folder / REPORT_FILE)
    for name, text in license.files.items():
        (folder / name).write_text(text)
    plots = []
    eval_dir = run_dir / "eval"
    if results is not None:
        (folder / "eval").mkdir(exist_ok=True)
        shutil.copy2(eval_dir / "results.json", folder / "eval" / "results.json")
        for png in sorted(eval_dir.glob("*.png")):
            shutil.copy2(png, folder / "eval" / png.name)
            plots.append(f"eval/{png.name}")
    card = build_card(target.kind, target.repo_id, target.base_model, run, recipe, license, results=results,
                      gguf_files=gguf_files, language=list(cfg.language), extra_tags=list(cfg.tags), plots=plots)
    (folder / "README.md").write_text(str(card) + "\n")
    files = check_staged(folder, target.kind)
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    return final, files


def merged_weights(run_dir: Path, base_dir: Path) -> Path:
    """The merged model, built once per run into <run>/publish/.merged-model and reused."""
    from publish.merge import merge_adapter

    out = run_dir / "publish" / ".merged-model"
    if not (out / "config.json").is_file():
        print(f"merging the adapter into the base ({base_dir})", flush=True)
        merge_adapter(base_dir, run_dir / ADAPTER_DIR, out)
    return out


def gguf_model_id(repo_id: str) -> str:
    """The model a GGUF repo holds: its name without -GGUF ("me/support-GGUF" holds "me/support")."""
    return repo_id.removesuffix(SUFFIX[DerivativeKind.gguf])


def gguf_filename(repo_id: str, qtype: str) -> str:
    return f"{gguf_model_id(repo_id).split('/')[-1]}-{qtype.upper()}.gguf"


def write_gguf(merged: Path, folder: Path, target: Target, base_id: str, license: License, recipe: dict,
               cfg: PublishConfig) -> list[str]:
    """One .gguf per cfg.gguf_types, named and licensed like the repo (general.* as llama.cpp writes them)."""
    from huggingface_hub import constants

    from publish.gguf import convert_to_gguf, hub_metadata, parameter_count

    model_id = gguf_model_id(target.repo_id)
    metadata = hub_metadata(target.repo_id, model_id, base_id, license.license, license.license_name, license.license_link,
                            tags=[*card_tags(target.kind, recipe, list(cfg.tags)), "text-generation"],
                            total_params=parameter_count(merged), endpoint=constants.ENDPOINT)
    files = []
    for qtype in cfg.gguf_types:
        filename = gguf_filename(target.repo_id, qtype)
        print(f"converting to GGUF {qtype.upper()}", flush=True)
        convert_to_gguf(merged, folder / filename, qtype=qtype, metadata=metadata)
        files.append(filename)
    return files


def preflight_publish(cfg: PublishConfig, base_id: Optional[str], architecture: str,
                      base_dir: Path) -> tuple[list[Target], License]:
    """Every check that needs no upload: repo ids, lineage, GGUF support, license. Also run by
    train.py before training when the recipe publishes, so a typo never costs a training run."""
    from publish.gguf import SUPPORTED_ARCHITECTURES as GGUF_ARCHITECTURES

    if not base_id:
        raise ScionError(
            "publish: the base was loaded from a local path and its Hub id is unknown; "
            "set model.hub_id=<org/name> so base_model lineage names the real base"
        )
    check_repo_id(base_id, "model.hub_id")
    targets = plan_targets(cfg, base_id)
    if any(t.kind == DerivativeKind.gguf for t in targets) and architecture not in GGUF_ARCHITECTURES:
        raise ScionError(f"publish: GGUF conversion does not support {architecture}; supported: {sorted(GGUF_ARCHITECTURES)}")
    return targets, read_base_license(str(base_dir), base_id)


def publish_run(run_dir: str | Path, cfg: PublishConfig, base_hub_id: Optional[str] = None) -> list[dict[str, Any]]:
    """Publish the run's derivatives as `cfg` says; returns one summary dict per repo."""
    # ---- Preflight: nothing leaves the machine, nothing heavy runs, until all of this holds.
    run_dir = Path(run_dir).expanduser()
    run = load_run(run_dir)
    recipe_text = (run_dir / RECIPE_FILE).read_text()
    recipe = yaml.safe_load(recipe_text)
    base_id = base_hub_id or run["base"].get("hub_id")
    if not base_id:
        raise ScionError(
            f"publish: the base was loaded from a local path ({run['base']['name_or_path']}) and its Hub id is unknown; "
            "pass model.hub_id=<org/name> so base_model lineage names the real base"
        )
    run["base"]["hub_id"] = base_id
    base_dir = base_directory(run, recipe)
    targets, license = preflight_publish(cfg, base_id, run["base"]["architecture"], base_dir)
    results_path = run_dir / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None

    # ---- The report shows the lineage of this publish; each repo gets a copy.
    lineage = lineage_record(targets, cfg, run, license)
    write_json_atomic(run_dir / LINEAGE_FILE, lineage)
    write_report(run_dir)

    # ---- Stage every kind, then show the plan.
    staged = [(t, *stage(t, run_dir, run, recipe, recipe_text, license, base_dir, cfg, results)) for t in targets]
    summaries = []
    for target, folder, files in staged:
        card_meta = yaml.safe_load((folder / "README.md").read_text().split("---", 2)[1])
        print_plan(target, cfg, folder, files, card_meta, license)
        summaries.append({"kind": target.kind.value, "repo_id": target.repo_id, "folder": str(folder),
                          "files": dict(files), "card": card_meta})
    if cfg.dry_run:
        print("dry run: nothing was uploaded", flush=True)
        return summaries

    # ---- Push, one commit per repo.
    from huggingface_hub import get_token

    from publish.push import push_folder

    token = get_token()
    for summary, (target, folder, _) in zip(summaries, staged):
        result = push_folder(folder, target.repo_id, revision=cfg.revision, private=cfg.private, create_pr=cfg.create_pr,
                             commit_message=f"Scion: publish {target.kind.value} of {base_id} ({run.get('recipe')})",
                             token=token)
        summary.update(commit=result.commit_sha, commit_url=result.commit_url, pr_url=result.pr_url, changed=result.changed)
        where = result.pr_url or result.commit_url or f"{target.repo_id}@{cfg.revision}"
        print(f"{target.kind.value}: " + (f"published {len(result.uploaded)} files -> {where}" if result.changed
                                          else f"{target.repo_id}@{cfg.revision} is already up to date (no commit)"), flush=True)
        entry = next(d for d in lineage["derivatives"] if d["kind"] == target.kind.value)
        entry.update(status="published" if result.changed else "up to date", commit_url=result.pr_url or result.commit_url)
    # The local report now links each commit (the uploaded copies show the lineage without them).
    write_json_atomic(run_dir / LINEAGE_FILE, lineage)
    write_report(run_dir)
    return summaries


def lineage_record(targets: list[Target], cfg: PublishConfig, run: dict, license: License) -> dict[str, Any]:
    """<run>/publish/lineage.json: the base, then each derivative with its relation and license, for the report."""
    from huggingface_hub import constants

    licensed = {"license": license.license, "license_name": license.license_name, "license_link": license.license_link}
    status = "planned (dry run)" if cfg.dry_run else "published"
    return {
        "dry_run": cfg.dry_run,
        "revision": cfg.revision,
        "endpoint": constants.ENDPOINT,
        "base": {"repo_id": run["base"]["hub_id"], "revision": run["base"].get("commit_sha") or run["base"].get("revision"),
                 **licensed},
        "derivatives": [
            {"kind": t.kind.value, "repo_id": t.repo_id, "base_model": t.base_model, "relation": RELATION[t.kind], **licensed,
             "files": [gguf_filename(t.repo_id, q) for q in cfg.gguf_types] if t.kind == DerivativeKind.gguf else [],
             "status": status, "commit_url": None}
            for t in targets
        ],
    }


def print_plan(target: Target, cfg: PublishConfig, folder: Path, files, card_meta: dict, license: License) -> None:
    branch = f"{cfg.revision} (as a pull request)" if cfg.create_pr else cfg.revision
    print(f"\n== {target.kind.value} -> {target.repo_id} @ {branch}{' (private)' if cfg.private else ''}", flush=True)
    print(f"   folder: {folder}")
    for rel, size in files:
        print(f"   {size:>14,d}  {rel}")
    meta = {k: card_meta.get(k) for k in ("base_model", "base_model_relation", "license", "license_name", "license_link",
                                          "library_name", "pipeline_tag", "datasets", "tags") if card_meta.get(k) is not None}
    meta["model-index"] = "yes" if card_meta.get("model-index") else "no"
    print("   card: " + json.dumps(meta, ensure_ascii=False))
    print(f"   license read from: {license.source}")
    if target.kind != DerivativeKind.adapter:
        print("   weights: adapter merged into the base in its own dtype (bf16 for Qwen), never into a 4-bit base")
    print(f"   relation: {RELATION[target.kind]} of {target.base_model}", flush=True)
