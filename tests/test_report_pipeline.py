"""The report at the end of the real pipeline: split -> finetune -> score -> eval -> report through the CLI on the
synthetic benchmark (popularity baseline over two seeds), numbers in the report equal to the metrics files."""
from __future__ import annotations

import json

from test_report import parse_page


def test_report_after_eval_on_the_synthetic_benchmark(synthetic_dataset, tmp_path, run_cli):
    from mmrec.data.splits import SplitConfig, make_split

    exp = tmp_path / "exp"
    make_split(synthetic_dataset, SplitConfig(protocol="loo", negatives=20, seed=0), exp / "splits" / "loo")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"experiment:\n  name: synth\n  dir: {exp}\n  seeds: [0, 1]\ndata:\n  path: {synthetic_dataset}\n"
                   "split:\n  protocol: loo\n  negatives: 20\nmodels:\n  pop:\n    kind: pop\n"
                   "report:\n  gallery_users: 2\n")
    for stage in (["finetune", cfg, "--seeds", "0", "1"], ["score", cfg], ["eval", cfg], ["report", cfg]):
        code, out, err = run_cli(*stage)
        assert code == 0, f"{stage[0]}: {err}"
    metrics = json.loads((exp / "metrics" / "pop@seed0.json").read_text())["metrics"]["test"]
    html = (exp / "report.html").read_text()
    page = parse_page(html)
    # popularity is deterministic: both seeds give the same numbers, so the interval is exactly zero
    assert f"{metrics['ndcg@10']:.4f}± 0.0000" in page.cells
    assert f"{metrics['auc']:.4f}± 0.0000" in page.cells
    assert metrics["tie_rate"] > 0 and f"{metrics['tie_rate']:.4f}± 0.0000" in page.cells  # popularity ties
    assert html.count("class='card'") == 2 and "true item" in html
    assert "data:image/png;base64," in html  # the synthetic items' images, embedded
    md = (exp / "report.md").read_text()
    assert f"{metrics['hr@10']:.4f} ± 0.0000" in md
