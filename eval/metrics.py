"""Generation metrics against the reference answers.

Exact/normalized match, ROUGE-L and chrF compare the answer: the text after the last `</think>` of
the generation and of the reference (all of it when there is none), so a model evaluated with
eval.enable_thinking=true is scored on its answer, not its reasoning. Stop rate and length count the
whole generation.

- exact_match: the stripped generation equals the stripped reference.
- normalized_match: equal after lowercasing and removing punctuation, articles (a, an, the) and
  extra whitespace (the usual QA normalisation), so "The answer: Paris." matches "paris".
- rouge_l: ROUGE-L F1 from Google's `rouge-score` (English tokenisation: letters and digits only).
- chrf: corpus chrF from `sacrebleu` (character n-grams, 0-100), which also works for languages
  rouge-score cannot tokenise.
- stop_rate: share of generations that emitted <|im_end|> (or <|endoftext|>) within
  max_new_tokens; a fine-tune near 0 "never stops" (pitfalls.md #1).
- mean_generated_tokens: generated tokens before the stop token, averaged.
"""

from __future__ import annotations

import re
import unicodedata

from eval.scoring import Generation

ARTICLES = re.compile(r"\b(a|an|the)\b")

# name: (label for tables and the card, higher_is_better)
METRICS = {
    "loss": ("Held-out loss", False),
    "perplexity": ("Perplexity", False),
    "exact_match": ("Exact match", True),
    "normalized_match": ("Normalized match", True),
    "rouge_l": ("ROUGE-L", True),
    "chrf": ("chrF", True),
    "stop_rate": ("Stop rate", True),
    "mean_generated_tokens": ("Mean generated tokens", None),  # neither: shorter is not better per se
}


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def rouge_l_scores(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer, tokenizers

    # The scorer's own default tokenizer (no stemming), given explicitly: left out, rouge_score logs
    # "Using default tokenizer." at INFO, which Hydra's console logging prints on every eval.
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=False))
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def corpus_chrf(predictions: list[str], references: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(predictions, [references]).score


def answer(text: str) -> str:
    """The answer of a generation or reference: what follows its last </think> (all of it when none)."""
    return text.rsplit("</think>", 1)[-1].strip()


def per_example(generation: Generation, reference: str, rouge_l: float) -> dict:
    """The per-example scores kept in samples.jsonl (on the answer after any reasoning)."""
    return {
        "exact_match": answer(generation.text) == answer(reference),
        "normalized_match": normalize(answer(generation.text)) == normalize(answer(reference)),
        "rouge_l": round(rouge_l, 4),
    }


def generation_metrics(generations: list[Generation], references: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Corpus-level metrics and the per-example scores, for one model."""
    predictions = [answer(g.text) for g in generations]
    references = [answer(r) for r in references]
    rouge = rouge_l_scores(predictions, references)
    rows = [per_example(g, ref, r) for g, ref, r in zip(generations, references, rouge)]
    n = max(len(generations), 1)
    metrics = {
        "exact_match": sum(r["exact_match"] for r in rows) / n,
        "normalized_match": sum(r["normalized_match"] for r in rows) / n,
        "rouge_l": sum(rouge) / n,
        "chrf": corpus_chrf(predictions, references),
        "stop_rate": sum(g.stopped for g in generations) / n,
        "mean_generated_tokens": sum(g.tokens for g in generations) / n,
    }
    return metrics, rows
