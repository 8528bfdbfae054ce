"""Evaluate a finished fine-tune against its base model.

    python eval.py run_dir=runs/quickstart/<time>
    python eval.py run_dir=<run> eval.max_examples=100 eval.max_new_tokens=64
    python eval.py run_dir=<run> eval.harness.tasks=[arc_easy,hellaswag] eval.harness.limit=200
    python eval.py run_dir=<run> eval.harness.include_path=my_tasks/ eval.harness.tasks=[my_task]

Base and fine-tune are scored on the run's held-out split (the one in its recipe.yaml) with the
same prompts and decoding settings: loss and perplexity over assistant tokens, exact and
normalized match, ROUGE-L, chrF, stop rate, generated length, sample generations, and optional
lm-evaluation-harness tasks. Only `eval.*` keys can be overridden; they are checked against the
schema (train/config.py, EvalConfig). Writes <run>/eval/results.json (schema:
eval/results.schema.json), samples.jsonl, loss_curves.png and metrics.png, and prints a table.
Bad input prints `error: <what>` and exits with status 2.

This file is only the entry point; the work happens in the `eval/` package (eval/run.py).
`import eval` resolves to that package, not to this script (a package wins over a module of
the same name on the same path entry).
"""

import sys

from eval.run import main

if __name__ == "__main__":
    sys.exit(main())
