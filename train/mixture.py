"""Data mixtures: `data.train` and `data.eval` as one source or a list, each read in its own format.

A source is a local file or a Hub dataset id, or a mapping:
    {path: chats.jsonl, format: auto, split: train, revision: null, weight: 1.0, max_rows: null}
- format: as `data.format` (auto: detected from the source's first row);
- split, revision: which split and Hub revision (branch, tag or commit) of a Hub dataset;
- max_rows: keep the first N rows of the source (before the eval split and the weight);
- weight: how often the source's training rows enter the mixture. The whole part repeats every
  row (weight 2: each row twice); the fractional part adds a seeded sample of that share of the
  rows (0.5: a seeded half; 1.5: every row once and a seeded half again). A source thus gives
  round(examples x weight) examples, and its share of the mixture is that over the total.
  Eval rows are never weighted: each is scored once.

`data.eval_ratio` holds out that share of each train source (seeded), so the eval set has every
source in it. Everything is seeded with the run's seed: the same config gives the same mixture.
Every source is read and checked before anything fails, so one report lists the bad rows of all.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from train.config import HUB_RECIPE, DataConfig, DataFormat
from train.data import (
    LOCAL_SUFFIXES, MAX_SHOWN, Row, SplitStats, conversation, detect_format, read_rows, tokenize_rows,
)
from train.errors import ScionError

SOURCE_KEYS = ("path", "format", "split", "revision", "weight", "max_rows")


@dataclass(frozen=True)
class SourceSpec:
    path: str  # local file or Hub dataset id
    key: str  # the config key, e.g. data.train[1], for errors
    format: DataFormat = DataFormat.auto
    split: str = "train"
    revision: Optional[str] = None
    weight: float = 1.0
    max_rows: Optional[int] = None


@dataclass
class SourceRows:
    """One source's rows after max_rows and the eval split (weights are applied to examples)."""
    spec: SourceSpec
    name: str  # file name or Hub id: what reports, results and the card show
    format: DataFormat
    train: list[Row]
    eval: list[Row]
    provenance: dict[str, Any]


@dataclass
class SplitRows:
    train: list[SourceRows]  # the data.train sources (eval rows here when split off by eval_ratio)
    eval: list[SourceRows]  # the parts holding eval rows: data.eval's sources or the train sources
    sources: list[dict[str, Any]]  # provenance for run.json

    def eval_parts(self) -> list[tuple[str, DataFormat, list[Row]]]:
        """(source name, format, eval rows) of every source that holds eval rows."""
        return [(part.name, part.format, part.eval) for part in self.eval if part.eval]


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Any | None
    stats: dict[str, SplitStats] = field(default_factory=dict)  # "train" (the mixture) and "eval" totals
    sources: list[dict[str, Any]] = field(default_factory=list)  # provenance and figures, for run.json
    cross_source_duplicates: int = 0  # train rows repeating a row of an earlier source (in stats["train"].duplicates too)
    cross_source_examples: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The config value: one source or a list of them
# ---------------------------------------------------------------------------------------------
def parse_sources(value: Any, key: str, default_split: str, default_format: DataFormat) -> list[SourceSpec]:
    """The sources named by `data.train` or `data.eval`; a one-line error naming the key otherwise."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        specs = [_parse_source(value, key, default_split, default_format)]
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ScionError(f"{key}: the list is empty; give a file or Hub dataset id, or a list of them")
        specs = [_parse_source(entry, f"{key}[{i}]", default_split, default_format) for i, entry in enumerate(value)]
    else:
        raise ScionError(f"{key}: expected a file or Hub dataset id, or a list of them; got {type(value).__name__}")
    seen: dict[tuple, str] = {}
    for spec in specs:
        ident = (spec.path, spec.split, spec.revision)
        if ident in seen:
            raise ScionError(f"{spec.key}: {spec.path} is listed twice (also {seen[ident]}); use weight to repeat a source")
        seen[ident] = spec.key
    return specs


def _parse_source(entry: Any, key: str, default_split: str, default_format: DataFormat) -> SourceSpec:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        raise ScionError(f"{key}: expected a file, a Hub dataset id or a mapping with 'path'; got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ScionError(f"{key}: unknown key {unknown[0]!r}; a source takes {', '.join(SOURCE_KEYS)}")
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ScionError(f"{key}.path: missing; give a local file or a Hub dataset id")
    fmt = entry.get("format", default_format)
    try:
        fmt = DataFormat(fmt)
    except ValueError:
        raise ScionError(f"{key}.format: {fmt!r} is not one of {', '.join(f.value for f in DataFormat)}") from None
    split = entry.get("split", default_split)
    if not isinstance(split, str) or not split:
        raise ScionError(f"{key}.split: expected a split name, got {split!r}")
    revision = entry.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ScionError(f"{key}.revision: expected a branch, tag or commit (quote it), got {revision!r}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ScionError(f"{key}.weight: expected a number above 0 (2 = every row twice, 0.5 = half), got {weight!r}")
    max_rows = entry.get("max_rows")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ScionError(f"{key}.max_rows: expected a whole number of at least 1 (or null), got {max_rows!r}")
    return SourceSpec(path=path, key=key, format=fmt, split=split, revision=revision, weight=float(weight),
                      max_rows=max_rows)


def display_name(spec: SourceSpec) -> str:
    """A local file by its name (never a path of this machine), a Hub dataset by its id."""
    path = Path(spec.path).expanduser()
    return path.name if path.is_file() else spec.path


def is_local(spec: SourceSpec) -> bool:
    """A local file (present or not), as read_rows tells them from Hub ids."""
    path = Path(spec.path).expanduser()
    return path.exists() or spec.path.startswith((".", "/", "~")) or path.suffix.lower() in LOCAL_SUFFIXES


# ---------------------------------------------------------------------------------------------
# Reading every source, and the eval split
# ---------------------------------------------------------------------------------------------
def _override_entry(spec: SourceSpec) -> str:
    """A source written as a Hydra override value, a local file as a placeholder to fill in."""
    path = f"<your copy of {Path(spec.path).name}>" if is_local(spec) else spec.path
    settings = [f"path:'{path}'"]
    if not is_local(spec):
        settings.append(f"split:{spec.split}")
    if spec.revision:
        settings.append(f"revision:{spec.revision}")
    if spec.weight != 1.0:
        settings.append(f"weight:{spec.weight}")
    if spec.max_rows is not None:
        settings.append(f"max_rows:{spec.max_rows}")
    return "{" + ",".join(settings) + "}" if len(settings) > 1 else f"'{path}'"


def _missing_local_hint(spec: SourceSpec, specs: list[SourceSpec]) -> str:
    """For a recipe from the Hub: which local file to supply, and the override that supplies it."""
    key = spec.key.split("[")[0]
    return (f"{spec.key}: the recipe from hub:{HUB_RECIPE[-1]} trains on the local file {Path(spec.path).name}, "
            f"which is not published and not on this machine; supply it with "
            f"\"{key}=[{','.join(_override_entry(s) for s in specs)}]\"")


def read_source(spec: SourceSpec, role: str, specs: list[SourceSpec]) -> tuple[list[Row], DataFormat, dict[str, Any]]:
    """A source's rows (the first max_rows), its format, and its provenance for run.json."""
    try:
        rows, provenance = read_rows(spec.path, spec.split, spec.key, spec.revision)
    except ScionError as e:
        if HUB_RECIPE and is_local(spec) and not Path(spec.path).expanduser().exists():
            raise ScionError(_missing_local_hint(spec, specs)) from None
        raise e
    if not rows:
        raise ScionError(f"{spec.key}: {spec.path} is empty")
    if spec.max_rows is not None:
        rows = rows[: spec.max_rows]
    fmt = spec.format if spec.format != DataFormat.auto else detect_format(rows)
    provenance = dict(provenance, role=role, key=spec.key, name=display_name(spec), format=fmt.value,
                      weight=spec.weight, max_rows=spec.max_rows)
    if provenance.get("source") and "sha256" not in provenance:  # a Hub dataset: keep its split
        provenance["split"] = spec.split
    return rows, fmt, provenance


def hold_out(rows: list[Row], ratio: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, eval) rows: a seeded `ratio` of the rows (at least one) held out, order kept."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[: max(1, int(round(len(rows) * ratio)))])
    return [r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out]


def _read_all(specs: list[SourceSpec], role: str, errors: list[str]) -> list[tuple[SourceSpec, list[Row], DataFormat, dict]]:
    """Every source that reads cleanly; the errors of the others are added to `errors`."""
    read = []
    for spec in specs:
        try:
            read.append((spec, *read_source(spec, role, specs)))
        except ScionError as e:
            errors.append(str(e))
    return read


def raise_collected(errors: list[str]) -> None:
    """One error for everything found wrong across the sources (one line)."""
    if len(errors) == 1:
        raise ScionError(errors[0])
    if errors:
        raise ScionError(f"{len(errors)} data sources have problems: " + " || ".join(errors))


def split_rows(cfg: DataConfig, seed: int = 42) -> SplitRows:
    """The raw train and eval rows of every source described by `cfg`."""
    if not 0.0 <= cfg.eval_ratio < 1.0:
        raise ScionError(f"data.eval_ratio must be in [0, 1), got {cfg.eval_ratio}")
    train_specs = parse_sources(cfg.train, "data.train", cfg.train_split, cfg.format)
    eval_specs = parse_sources(cfg.eval, "data.eval", cfg.eval_split, cfg.format)
    for spec in eval_specs:
        if spec.weight != 1.0:
            raise ScionError(f"{spec.key}.weight: weights shape the training mixture only; every eval row is scored once")
    errors: list[str] = []
    train_read, eval_read = _read_all(train_specs, "train", errors), _read_all(eval_specs, "eval", errors)
    raise_collected(errors)

    train_parts, eval_parts, sources = [], [], []
    for (spec, rows, fmt, provenance), name in zip(train_read, _unique_names([p["name"] for *_, p in train_read])):
        held: list[Row] = []
        if not eval_specs and cfg.eval_ratio > 0:
            rows, held = hold_out(rows, cfg.eval_ratio, seed)
        provenance["name"] = name
        train_parts.append(SourceRows(spec, name, fmt, rows, held, provenance))
        sources.append(provenance)
        if held:
            sources.append({"source": provenance["source"], "name": name, "role": "eval", "key": spec.key,
                            "split_from_train": cfg.eval_ratio, "seed": seed, "rows": len(held), "format": fmt.value,
                            "train_fingerprint": provenance.get("sha256") or provenance.get("fingerprint")})
    for (spec, rows, fmt, provenance), name in zip(eval_read, _unique_names([p["name"] for *_, p in eval_read])):
        provenance["name"] = name
        eval_parts.append(SourceRows(spec, name, fmt, [], rows, provenance))
        sources.append(provenance)
    return SplitRows(train=train_parts, eval=eval_parts if eval_specs else train_parts, sources=sources)


def _unique_names(names: list[str]) -> list[str]:
    """Names as given, with ' #2', ' #3' added where two sources share one (a Hub id with two splits)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizing and weighting
# ---------------------------------------------------------------------------------------------
def weighted_indices(n: int, weight: float, rng: random.Random) -> list[int]:
    """Indices of n examples under a weight: each index int(weight) times, plus a seeded sample
    of round(n x fraction) indices once more."""
    whole = int(weight)
    extra = int(round(n * (weight - whole)))
    return [i for _ in range(whole) for i in range(n)] + sorted(rng.sample(range(n), extra))


def cross_source_duplicates(parts: list[SourceRows], cfg: DataConfig) -> tuple[int, list[str]]:
    """How many train rows repeat a row of an earlier source (the same conversation once read,
    whatever the formats), and the first few of them."""
    first_seen: dict[str, str] = {}
    count, shown = 0, []
    for part in parts:
        local: dict[str, str] = {}
        for row in part.train:
            key = json.dumps(conversation(row, part.format, cfg), sort_keys=True)
            if key in first_seen:
                count += 1
                if len(shown) < MAX_SHOWN:
                    shown.append(f"{row.where} repeats {first_seen[key]}")
            local.setdefault(key, row.where)
        for key, where in local.items():
            first_seen.setdefault(key, where)
    return count, shown


def _tokenize_parts(parts, rows_of, tokenizer, cfg: DataConfig, desc: str, errors: list[str]):
    """(part, examples, stats) for each part with rows; errors of all parts are collected."""
    done = []
    for part in parts:
        rows = rows_of(part)
        if not rows:
            continue
        stats = SplitStats(part.name)
        try:
            examples = tokenize_rows(rows, part.format, tokenizer, cfg, stats, f"{desc} {part.name}")
        except ScionError as e:
            errors.append(f"{part.spec.key} ({part.name}): {e}" if len(parts) > 1 else str(e))
            continue
        done.append((part, examples, stats))
    return done


def _add(total: SplitStats, stats: SplitStats) -> None:
    for name in ("rows", "examples", "truncated", "dropped_too_long", "tokens", "trained_tokens", "duplicates", "with_reasoning"):
        setattr(total, name, getattr(total, name) + getattr(stats, name))
    total.duplicate_examples += stats.duplicate_examples[: MAX_SHOWN - len(total.duplicate_examples)]


def prepare_data(cfg: DataConfig, tokenizer, seed: int = 42) -> PreparedData:
    """Read, check and tokenize every source; weight the train sources into one mixture."""
    import datasets

    if cfg.max_length < 16:
        raise ScionError(f"data.max_length must be at least 16, got {cfg.max_length}")
    rows = split_rows(cfg, seed)
    errors: list[str] = []
    train_done = _tokenize_parts(rows.train, lambda p: p.train, tokenizer, cfg, "tokenizing train", errors)
    eval_done = _tokenize_parts(rows.eval, lambda p: p.eval, tokenizer, cfg, "tokenizing eval", errors)
    raise_collected(errors)

    mixture: list[dict] = []
    total = SplitStats(" + ".join(part.name for part, _, _ in train_done))
    for part, examples, stats in train_done:
        if not examples:
            raise ScionError(f"{part.spec.key}: no example left after data.truncation=drop at max_length={cfg.max_length}")
        chosen = weighted_indices(len(examples), part.spec.weight, random.Random(f"{seed}:{part.spec.key}"))
        if not chosen:
            raise ScionError(f"{part.spec.key}.weight: {part.spec.weight} of {len(examples)} examples leaves none; raise it")
        _add(total, stats)
        part.provenance.update(train_rows=stats.rows, examples=stats.examples, tokens=stats.tokens, trained_tokens=stats.trained_tokens,
                               duplicates=stats.duplicates, mixture_examples=len(chosen),
                               mixture_trained_tokens=sum(sum(l != -100 for l in examples[i]["labels"]) for i in chosen))
        mixture += [examples[i] for i in chosen]
    across = (0, [])
    if len(train_done) > 1:
        across = cross_source_duplicates([part for part, _, _ in train_done], cfg)
        total.duplicates += across[0]
    total.examples = len(mixture)  # the mixture, after weights
    total.tokens = sum(len(e["input_ids"]) for e in mixture)
    total.trained_tokens = sum(p.provenance["mixture_trained_tokens"] for p, _, _ in train_done)
    for part, _, _ in train_done:
        part.provenance["share"] = round(part.provenance["mixture_examples"] / len(mixture), 4)

    stats = {"train": total}
    evals: list[dict] = []
    if eval_done:
        stats["eval"] = SplitStats(" + ".join(part.name for part, _, _ in eval_done)
                                   + (f" (eval_ratio={cfg.eval_ratio})" if not cfg.eval else ""))
        for part, examples, part_stats in eval_done:
            if not examples:
                raise ScionError(f"{part.spec.key}: no eval example left after data.truncation=drop at max_length={cfg.max_length}")
            _add(stats["eval"], part_stats)
            evals += examples
    return PreparedData(
        train=datasets.Dataset.from_list(mixture),
        eval=datasets.Dataset.from_list(evals) if evals else None,
        stats=stats,
        sources=rows.sources,
        cross_source_duplicates=across[0],
        cross_source_examples=across[1],
    )


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def report_lines(data: PreparedData) -> list[str]:
    """The data report: totals per split, and per train source when there is a mixture."""
    lines = []
    for split, s in data.stats.items():
        line = (f"data[{split}]: {s.examples} examples, {s.tokens} tokens ({s.trained_tokens} trained), "
                f"{s.with_reasoning} with reasoning, from {s.source}")
        if s.truncated or s.dropped_too_long:
            line += f"; {s.truncated} truncated, {s.dropped_too_long} dropped as too long"
        lines.append(line)
        if s.duplicates:
            shown = f" ({'; '.join(s.duplicate_examples)})" if s.duplicate_examples else ""
            lines.append(f"warning: data[{split}]: {s.duplicates} duplicate examples{shown}")
    if data.cross_source_duplicates:
        lines.append(f"warning: data[train]: {data.cross_source_duplicates} of the duplicates repeat another source "
                     f"({'; '.join(data.cross_source_examples)})")
    train = [s for s in data.sources if s.get("role") == "train"]
    if len(train) > 1 or any(s.get("weight", 1.0) != 1.0 for s in train):
        lines += mixture_table(train)
    return lines


def mixture_table(train_sources: list[dict[str, Any]]) -> list[str]:
    """Per train source: rows used, examples, tokens, trained tokens, weight, and its share of the
    mixture by examples and by trained tokens."""
    all_trained = sum(s.get("mixture_trained_tokens", 0) for s in train_sources) or 1
    header = ("source", "format", "rows", "examples", "tokens", "trained", "weight", "in mixture", "share", "trained share")
    rows = [(s["name"], s["format"], s.get("train_rows"), s.get("examples"), s.get("tokens"), s.get("trained_tokens"),
             f"{s.get('weight', 1.0):g}", s.get("mixture_examples"), f"{100 * s.get('share', 0):.1f}%",
             f"{100 * s.get('mixture_trained_tokens', 0) / all_trained:.1f}%")
            for s in train_sources]
    rows = [tuple(str(v) for v in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  " + "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths)))

    return ["data mixture (train):", line(header)] + [line(r) for r in rows]
