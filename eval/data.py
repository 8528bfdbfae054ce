"""The held-out examples an evaluation scores, read exactly as training read them.

The rows come from `train.mixture.split_rows` with the run's data config and seed, so a split made
with `data.eval_ratio` holds the same rows as during training, and every row goes through
`train.data.conversation` (same checks, same system-prompt policy). With several eval sources,
`eval.max_examples` takes rows from the sources in turn, so each is represented, and every example
remembers its source for the per-source table. Each example keeps:
- the whole conversation (its assistant tokens give the held-out loss), and
- the conversation up to its LAST assistant turn as the generation prompt, with that turn's
  content as the reference answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from train.config import DataFormat, ScionConfig
from train.data import Row, content_text, conversation, message_role_and_content, raw_messages
from train.mixture import split_rows
from train.errors import ScionError


@dataclass
class EvalExample:
    index: int  # position in the eval split
    where: str  # "path:line", for error messages
    messages: list[dict[str, str]]  # the whole conversation
    prompt: list[dict[str, str]]  # up to (not including) the last assistant turn
    reference: str  # the last assistant turn's content
    source: str = ""  # the name of its data source (file name or Hub id)


@dataclass
class EvalSet:
    examples: list[EvalExample]
    available: int  # rows in the eval split before eval.max_examples
    source: dict[str, Any]  # provenance: source and fingerprint (of all sources together when several)
    sources: list[dict[str, Any]]  # provenance of each eval source, with its fingerprint


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def reference_problem(row: Row, fmt: DataFormat) -> Optional[str]:
    """Why a row has no reference answer to score a generation against, or None when it has one.

    Checked before `conversation()` so the error says "no reference answer" rather than the
    training wording ("nothing to train on"); other malformations are left to `conversation()`.
    """
    data = row.data if isinstance(row.data, dict) else {}
    if fmt == DataFormat.prompt_completion:
        return None if _filled(data.get("completion")) else "its 'completion' is missing or empty"
    if fmt == DataFormat.instruction:
        return None if _filled(data.get("output")) else "its 'output' is missing or empty"
    try:
        raw = raw_messages(data)
    except ValueError:
        return None
    if not isinstance(raw, list):
        return None
    turns = [message_role_and_content(m) for m in raw if isinstance(m, dict)]
    answers = [content for role, content in turns if role == "assistant"]
    if not answers:
        return "it has no assistant turn"
    try:
        last = content_text(answers[-1], len(raw) - 1, row.where)
    except ScionError:  # missing or not text: no answer to score against
        last = None
    if not _filled(last):
        return "its last assistant turn is empty"
    return None


def split_at_last_answer(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def fingerprint(source: dict[str, Any], sources: list[dict[str, Any]]) -> Optional[str]:
    """One string that changes whenever the evaluated rows could: a file's sha256, a Hub
    dataset's fingerprint, or for a ratio split the train source's hash with the ratio and seed."""
    if source.get("sha256") or source.get("fingerprint"):
        return source.get("sha256") or source.get("fingerprint")
    if "split_from_train" in source:
        base = source.get("train_fingerprint")
        if base is None:  # run.json written before mixtures: the one train source
            train = next((s for s in sources if s.get("role") == "train"), {})
            base = train.get("sha256") or train.get("fingerprint")
        return f"{base}:eval_ratio={source['split_from_train']}:seed={source.get('seed')}" if base else None
    return None


def combined(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance of the eval set as a whole: the one source as is, or all sources joined."""
    if len(sources) == 1:
        return sources[0]
    prints = [s.get("fingerprint") for s in sources]
    return {"source": " + ".join(s["name"] for s in sources), "role": "eval", "rows": sum(s.get("rows", 0) for s in sources),
            "fingerprint": "+".join(prints) if all(prints) else None}


def take_in_turn(parts: list[list[Any]], limit: Optional[int]) -> list[Any]:
    """Up to `limit` items taking one from each part in turn (each part in its order); all when None."""
    if limit is None:
        return [item for part in parts for item in part]
    taken: list[Any] = []
    for depth in range(max((len(p) for p in parts), default=0)):
        for part in parts:
            if depth < len(part) and len(taken) < limit:
                taken.append(part[depth])
    return taken


def load_eval_set(config: ScionConfig, max_examples: Optional[int]) -> EvalSet:
    """The first `max_examples` rows of the run's eval split, checked and split into prompt + reference."""
    data = config.data
    rows = split_rows(data, seed=config.trainer.seed)
    parts = rows.eval_parts()
    if not parts:
        raise ScionError(
            "data: the run has no eval split (data.eval is null and data.eval_ratio is 0); evaluation needs "
            "held-out rows with reference answers"
        )
    named = {s["name"]: s for s in rows.sources if s.get("role") == "eval"}
    sources = [dict(named[name], fingerprint=fingerprint(named[name], rows.sources)) for name, _, _ in parts]
    chosen = take_in_turn([[(name, fmt, row) for row in part_rows] for name, fmt, part_rows in parts], max_examples)
    examples = []
    for index, (name, fmt, row) in enumerate(chosen):
        problem = reference_problem(row, fmt)
        if problem:
            raise ScionError(f"data.eval: {row.where}: {problem}, so there is no reference answer to score against")
        messages = conversation(row, fmt, data)
        prompt, reference = split_at_last_answer(messages)
        examples.append(EvalExample(index=index, where=row.where, messages=messages, prompt=prompt, reference=reference,
                                    source=name))
    return EvalSet(examples=examples, available=sum(len(p) for _, _, p in parts), source=combined(sources),
                   sources=sources)
