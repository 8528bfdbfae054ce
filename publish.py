"""Publish a finished run's derivatives to the Hub with correct base_model lineage.

    python publish.py run_dir=runs/quickstart/<time> repo_id=org/name kind=adapter
    python publish.py run_dir=<run> repo_id=org/name kind=[adapter,merged,gguf] dry_run=true
    python publish.py run_dir=<run> repo_id=org/name kind=merged create_pr=true private=true revision=dev

Settings default to the run's own `publish:` section (recipe.yaml); arguments override them.
Keys: run_dir, repo_id, kind (or kinds), merged_repo_id, gguf_repo_id, gguf_types, private,
create_pr, revision, dry_run, language, tags, and model.hub_id (the base's Hub id when the run
trained from a plain directory). `publish.<key>=` works too. The token comes from HF_TOKEN or
`hf auth login`; HF_ENDPOINT selects another Hub-compatible server.
"""

import sys

from publish.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
