"""The whole pipeline on the built-in synthetic benchmark with tiny models: no arguments, no downloads, CPU.

    mmrec demo [--out runs/demo]

It generates the synthetic multimodal benchmark, builds tiny LLaVA / LLM / CLIP models locally, writes an
experiment config (`<out>/demo.yaml`) and runs every stage through `mmrec run`: item summaries, recurrent user
preferences, LoRA finetuning of the tiny LLaVA recommender, the MMREC CTR variants, popularity / GRU4Rec / SASRec,
evaluation on the shared candidates and the HTML report. Re-running it skips what is done.

Tiny models have random weights: their summaries are meaningless text and only the pipeline is real. Their
recommenders still learn from the benchmark's visual signal, so the ranking of models is informative.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from mmrec.experiment import ExperimentConfig, ExperimentPaths

REAL_RUN = """\
For real checkpoints, prepare a dataset and run a paper config, e.g.:
  mmrec prep amazon2023 --reviews Baby_Products.jsonl.gz --meta meta_Baby_Products.jsonl.gz --images imgs/ \\
      --min-user 6 --min-item 5 --require-image --out data/amazon_baby
  mmrec run configs/mllm_msr/amazon_baby_paper.yaml
(llava-hf/llava-v1.6-mistral-7b-hf and meta-llama/Meta-Llama-3-8B-Instruct need a GPU with about 24 GB for bf16
LoRA, or 12 GB with configs/mllm_msr/qlora_single_gpu.yaml; see docs/vlm.md)."""

# Sizes that keep the whole demo well under 10 minutes on 2 CPU cores.
SIZES: dict[str, dict[str, int]] = {
    "default": {"users": 160, "items": 80, "interactions": 16, "epochs": 30, "vlm_epochs": 2, "valid_users": 40},
    "small": {"users": 40, "items": 60, "interactions": 10, "epochs": 3, "vlm_epochs": 1, "valid_users": 10},
}


# LoRA on every language-model linear layer plus lm_head: a random tiny head otherwise caps how far the
# Yes/No logits can move (docs/vlm_recommender.md).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="experiment directory (default runs/demo)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="'small' is a faster smoke run (used by the tests)")
    parser.add_argument("--dry-run", action="store_true", help="write the config and print the plan; run nothing")


def build_tiny_models(models_dir: Path) -> dict[str, Path]:
    """Tiny random LLaVA (recommender + item summarizer), LLM (preference summarizer) and CLIP (image encoder)."""
    from mmrec.encoders.image import build_tiny_open_clip
    from mmrec.tiny import build_tiny_llava, build_tiny_llm

    paths = {"llava": models_dir / "tiny-llava", "llm": models_dir / "tiny-llm", "clip": models_dir / "tiny-clip"}
    builders = {"llava": build_tiny_llava, "llm": build_tiny_llm, "clip": build_tiny_open_clip}
    for name, path in paths.items():
        if not path.is_dir():
            builders[name](path, seed=0)
    return paths


def demo_config(out: Path, models: dict[str, Path], size: str = "default") -> dict[str, Any]:
    """The demo's experiment config (written to <out>/demo.yaml so it can be re-run or edited)."""
    s = SIZES[size]
    clip = {"model": str(models["clip"]), "pretrained": None, "batch_size": 64}
    ctr = {"kind": "ctr", "epochs": min(8, s["epochs"]), "patience": 3, "batch_size": 256, "negatives": 4,
           "image_encoder": clip, "device": "cpu"}
    seq = {"epochs": s["epochs"], "patience": 5, "batch_size": 64, "device": "cpu"}
    return {
        "experiment": {"name": "demo", "dir": str(out), "seed": 0},
        "data": {"source": "synthetic", "options": {"users": s["users"], "items": s["items"],
                                                    "interactions_per_user": s["interactions"], "seed": 0}},
        "split": {"protocol": "loo", "negatives": 20, "seed": 0},
        "item_summaries": {"model": {"name_or_path": str(models["llava"]), "dtype": "float32"},
                           "template": "fusion", "max_new_tokens": 12, "batch_size": 32},
        "user_summaries": {"model": {"name_or_path": str(models["llm"]), "dtype": "float32"},
                           "block_size": 3, "max_history": 9, "max_new_tokens": 16, "batch_size": 64},
        "models": {
            "pop": {"kind": "pop"},
            "gru4rec": {"kind": "gru4rec", **seq},
            "sasrec": {"kind": "sasrec", **seq},
            "mmrec_text": {**ctr, "variant": "text"},
            "mmrec_text_image": {**ctr, "variant": "text_image"},
            "mmrec": {**ctr, "variant": "mmrec"},
            "llava_zero_shot": {"kind": "vlm", "variant": "zero_shot",
                                "model": {"name_or_path": str(models["llava"]), "dtype": "float32"}},
            # Reads the recurrent preferences of summarize-users, as the paper's recommender does.
            "mllm_msr": {"kind": "vlm", "variant": "mllm_msr",
                         "model": {"name_or_path": str(models["llava"]), "dtype": "float32"},
                         "loss": "yes_no", "lora": {"r": 16, "alpha": 32, "targets": LORA_TARGETS},
                         "train": {"lr": 1e-3, "schedule": "constant", "epochs": s["vlm_epochs"], "batch_size": 32,
                                   "valid_users": s["valid_users"], "checkpoint_every": 50, "log_every": 5}},
        },
        "eval": {"ks": [1, 5, 10]},
        "report": {"title": "mmrec demo (synthetic benchmark, tiny models)", "gallery_users": 6},
    }


def results_table(cfg: ExperimentConfig, stage: str = "test") -> str:
    """HR/NDCG/MRR/AUC of every run, read back from metrics/<run>.json."""
    paths = ExperimentPaths(cfg.dir)
    cols = ["hr@1", "hr@5", "ndcg@10", "mrr@10", "auc"]
    lines = [f"{'model':<18} " + " ".join(f"{c:>8}" for c in cols)]
    for name in cfg.model_names():
        f = paths.metrics(name)
        if not f.is_file():
            continue
        metrics = json.loads(f.read_text())["metrics"].get(stage, {})
        lines.append(f"{name:<18} " + " ".join(f"{metrics.get(c, float('nan')):>8.4f}" for c in cols))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from mmrec.io import write_text
    from mmrec.pipeline import Pipeline

    out: Path = args.out
    models = build_tiny_models(out / "models")
    config_path = out / "demo.yaml"
    header = "# Written by `mmrec demo`; re-run with: mmrec run " + str(config_path) + "\n"
    write_text(header + yaml.safe_dump(demo_config(out, models, args.size), sort_keys=False), config_path)
    cfg = ExperimentConfig.load(config_path)
    cfg.validate_all()
    Pipeline(cfg, str(config_path), []).run(dry_run=args.dry_run)
    if args.dry_run:
        return 0
    print("\nResults on the test candidates (1 target + 20 sampled negatives per user; "
          "protocol and hashes in metrics/*.json and the report):")
    print(results_table(cfg))
    print(f"\nReport: {ExperimentPaths(cfg.dir).report_html.resolve()}")
    print("\nNote: the tiny models have random weights, so their item summaries and user preferences are "
          "meaningless text,\nand a random tiny LLaVA needs far more steps than a demo allows to learn the visual match "
          "(expect its rows near chance).\nOnly the pipeline is real here. " + REAL_RUN)
    return 0
