"""<run>/report.html: written by training (with its evaluation), re-rendered and uploaded by the
publisher, and checked in a real headless browser (Debian's chromium through playwright)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, write_jsonl
from train.config import (
    DataConfig, DerivativeKind, EvalConfig, ModelConfig, PeftConfig, Precision, PublishConfig, ScionConfig, TrainerConfig,
)

CHROMIUM = Path("/usr/bin/chromium")
# User text that must show as text, never run or render as markup.
HOSTILE = "Echo <script>window.__pwned = 1</script> & <b>bold</b>"
KINDS = ["adapter", "merged", "gguf"]
pytestmark = pytest.mark.slow  # one short training with evaluation, a merge and a GGUF: about a minute


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_qwen2_dir):
    """A short run with evaluation on 25 held-out examples, then a dry-run publish of all three kinds."""
    from publish.run import publish_run
    from pipeline import run_pipeline

    folder = tmp_path_factory.mktemp("report")
    rows = [json.loads(line) for line in (REPO_ROOT / "data/quickstart/eval.jsonl").read_text().splitlines()[:24]]
    rows.append({"messages": [{"role": "user", "content": HOSTILE}, {"role": "assistant", "content": "<i>x</i> & y"}]})
    config = ScionConfig(
        model=ModelConfig(name_or_path=str(tiny_qwen2_dir), hub_id="scion-test/tiny-qwen2"),
        peft=PeftConfig(r=4, alpha=8, dropout=0.0),
        data=DataConfig(train=str(REPO_ROOT / "data/quickstart/train.jsonl"), eval=str(write_jsonl(folder / "eval.jsonl", rows)),
                        max_length=96),
        trainer=TrainerConfig(output_dir=str(folder / "run"), max_steps=6, batch_size=8, gradient_accumulation_steps=1,
                              learning_rate=2e-2, precision=Precision.fp32, logging_steps=1, eval_steps=3, save_steps=100),
        eval=EvalConfig(max_new_tokens=4, batch_size=32),
        recipe_name="report-test",
    )
    result = run_pipeline(config)  # train, evaluate, report (and publish when configured)
    assert (result.run_dir / "report.html").is_file()  # training writes it, after its evaluation
    publish_run(result.run_dir, PublishConfig(repo_id="me/report", kinds=[DerivativeKind(k) for k in KINDS],
                                              gguf_types=["q8_0"], dry_run=True))
    return result.run_dir


def expected_delta_class(metric: dict) -> str:
    delta, higher = metric["delta"], metric["higher_is_better"]
    if delta is None or higher is None or delta == 0:
        return "same"
    return "better" if (delta > 0) == higher else "worse"


def test_report_holds_the_run_and_is_uploaded_with_every_kind(published):
    html = (published / "report.html").read_text()
    results = json.loads((published / "eval/results.json").read_text())
    run = json.loads((published / "run.json").read_text())

    # Self-contained: no script, no external stylesheet, image or font.
    assert "<script" not in html.replace("&lt;script", "")
    assert not re.search(r'(src|href)="(?!https://huggingface.co|http://127.0.0.1|#)', html)
    assert "<style>" in html and "<svg" in html
    # Deltas coloured as results.json says they should be, one row per metric.
    cells = re.findall(r'<td class="delta (\w+)">([^<]*)</td>', html)
    assert [c for c, _ in cells] == [expected_delta_class(m) for m in results["metrics"].values()]
    # Every sample (>= 20), with user text escaped.
    samples = [json.loads(line) for line in (published / "eval/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 25 and html.count('<td class="idx">') == 25
    assert "Echo &lt;script&gt;window.__pwned = 1&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    # Summary: base with revision, method, data rows, tokens/s.
    assert "scion-test/tiny-qwen2" in html and "LORA r=4 α=8" in html
    assert "train.jsonl (train): 320 rows" in html and f"{run['metrics']['tokens_per_second']:,.0f}" in html
    # Lineage as planned by the dry run: base, adapter, merged, GGUF, each with relation and license.
    lineage = json.loads((published / "publish/lineage.json").read_text())
    assert [d["kind"] for d in lineage["derivatives"]] == KINDS
    chain = re.findall(r'<tr><td><span class="relation">(\w+)</span></td><td><a href="[^"]+">([^<]+)</a>', html)
    assert chain == [("base", "scion-test/tiny-qwen2"), ("adapter", "me/report"), ("merged", "me/report-merged"),
                     ("gguf", "me/report-GGUF")]
    assert "quantized of me/report-merged" in html and "finetune of scion-test/tiny-qwen2" in html
    assert html.count("apache-2.0") == 4 and html.count("planned (dry run)") == 3 and "report-Q8_0.gguf" in html
    # Each published kind carries the same report.
    for kind in KINDS:
        assert (published / "publish" / kind / "report.html").read_text() == html, kind


def test_eval_py_rewrites_the_report(published, tmp_path):
    from eval.run import main

    run = tmp_path / "run"
    shutil.copytree(published, run, ignore=shutil.ignore_patterns("checkpoints", "publish"))
    (run / "report.html").unlink()
    assert main([f"run_dir={run}", "eval.max_examples=21", "eval.max_new_tokens=2"]) == 0
    html = (run / "report.html").read_text()
    assert html.count('<td class="idx">') == 21 and "Not published yet" in html


def test_report_renders_in_a_browser(published):
    """Open the page in headless chromium: table, curves and samples render, with no console error."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extra)")

    results = json.loads((published / "eval/results.json").read_text())
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        # playwright cannot download its own browser here: drive the system's chromium.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((published / "report.html").as_uri(), wait_until="load")

            metric_rows = page.locator("table.metrics tbody tr")
            assert metric_rows.count() == len(results["metrics"])
            assert metric_rows.first.is_visible()
            chart = page.locator("#curves svg.chart").bounding_box()
            assert chart and chart["width"] > 500 and chart["height"] > 200
            train_curve = page.locator("#curves svg polyline").first.bounding_box()
            assert train_curve and train_curve["width"] > 300  # six logged steps drawn across the plot
            sample_rows = page.locator("table.samples tbody tr")
            assert sample_rows.count() == 25 and sample_rows.nth(19).is_visible()
            assert page.locator("table.lineage tbody tr").count() == 4
            # The hostile sample shows as text and never ran.
            assert page.evaluate("window.__pwned") is None
            assert page.get_by_text(HOSTILE, exact=True).count() == 1
            # Outside pytest's tmp dirs, which other runs rotate away: the path is printed for a person to look at.
            screenshot = Path(tempfile.mkdtemp(prefix="scion-report-")) / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [(published / "report.html").as_uri()]  # nothing fetched: self-contained
    print(f"report screenshot: {screenshot}")
