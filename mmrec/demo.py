"""The whole pipeline on the built-in synthetic benchmark with tiny models: no arguments, no downloads, CPU.

    mmrec demo [--out runs/demo] [--size small] [--generated]

It generates the synthetic multimodal benchmark, builds tiny LLaVA / LLM / CLIP models locally, writes an
experiment config (`<out>/demo.yaml`) and runs every stage through `mmrec run`: item summaries, recurrent user
preferences, LoRA finetuning of the tiny LLaVA recommender, the MMREC CTR variants, popularity / GRU4Rec / SASRec,
evaluation on the shared candidates and the HTML report. Re-running it skips what is done.

Tiny models have random weights: their summaries are meaningless text (the truth metrics of `mmrec eval` say
so). The MLLM-MSR recommender follows the measured tiny recipe (configs/mllm_msr/tiny_synthetic.yaml) and learns the
benchmark's visual signal when it reads the true preference sentence (`mllm_msr`), beside its text-only ablation
(`tallrec`); `--generated` adds the same recommender reading the tiny LLM's preferences (`mllm_msr_generated`).
"""
from __future__ import annotations

import argparse
import json
import os
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mmrec.experiment import ExperimentConfig

if TYPE_CHECKING:
    from mmrec.pipeline import Pipeline

REAL_RUN = """\
For real checkpoints, prepare a dataset and run a paper config, e.g.:
  mmrec prep amazon2023 --reviews Baby_Products.jsonl.gz --meta meta_Baby_Products.jsonl.gz --images imgs/ \\
      --min-user 6 --min-item 5 --require-image --out data/amazon_baby
  mmrec run configs/mllm_msr/amazon_baby_paper.yaml
(llava-hf/llava-v1.6-mistral-7b-hf and meta-llama/Meta-Llama-3-8B-Instruct need a GPU with about 24 GB for bf16
LoRA, or 12 GB with configs/mllm_msr/qlora_single_gpu.yaml; see docs/vlm.md)."""

# Sizes that keep the whole demo under 6 minutes on 2 CPU cores. `vlm_epochs` x (training rows / 64) is the number
# of optimizer steps of the MLLM-MSR recipe; a random tiny LLaVA leaves the loss plateau after ~200-300 steps of 64.
SIZES: dict[str, dict[str, int]] = {
    "default": {"users": 1500, "items": 400, "interactions": 8, "epochs": 20, "vlm_epochs": 16, "eval_every": 300},
    "small": {"users": 600, "items": 200, "interactions": 8, "epochs": 3, "vlm_epochs": 20, "eval_every": 150},
}


# LoRA on every language-model linear layer plus lm_head: a random tiny head otherwise caps how far the
# Yes/No logits can move (docs/vlm_recommender.md).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="experiment directory (default runs/demo)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="'small' is a faster smoke run (used by the tests)")
    parser.add_argument("--generated", action="store_true",
                        help="also train MLLM-MSR on the tiny LLM's preferences (the whole chain, row "
                             "mllm_msr_generated; about 3 more CPU minutes at the default size)")
    parser.add_argument("--dry-run", action="store_true", help="write the config and print the plan; run nothing")


def build_tiny_models(models_dir: Path) -> dict[str, Path]:
    """Tiny random LLaVA (recommender + item summarizer), LLM (preference summarizer) and CLIP (image encoder)."""
    from mmrec.encoders.image import build_tiny_open_clip
    from mmrec.tiny import build_tiny_llava, build_tiny_llm

    paths = {"llava": models_dir / "tiny-llava", "llm": models_dir / "tiny-llm", "clip": models_dir / "tiny-clip"}
    builders = {"llava": build_tiny_llava, "llm": build_tiny_llm, "clip": build_tiny_open_clip}
    for name, path in paths.items():
        if not path.is_dir():
            # a 64-wide vision tower: the 32-wide default barely separates the colours
            builders[name](path, seed=0, **({"vision_hidden": 64} if name == "llava" else {}))
    return paths


def demo_config(out: Path, models: dict[str, Path], size: str = "default", generated: bool = False
                ) -> dict[str, Any]:
    """The demo's experiment config (written to <out>/demo.yaml so it can be re-run or edited).

    The data and the VLM recommenders follow the measured tiny recipe (configs/mllm_msr/tiny_synthetic.yaml): a
    clean benchmark (no popularity noise or drift), the paper's user-disjoint protocol, Yes/No loss, LoRA also on
    lm_head, a constant lr of 1e-3 and batches of 64."""
    s = SIZES[size]
    clip = {"model": str(models["clip"]), "pretrained": None, "batch_size": 64}
    ctr = {"kind": "ctr", "epochs": min(8, s["epochs"]), "patience": 3, "batch_size": 256, "negatives": 4,
           "image_encoder": clip, "device": "cpu"}
    seq = {"epochs": s["epochs"], "patience": 5, "batch_size": 64, "device": "cpu"}
    llava = {"name_or_path": str(models["llava"]), "dtype": "float32"}
    recipe = {"model": llava, "loss": "yes_no",
              "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": LORA_TARGETS},
              "train": {"lr": 1e-3, "schedule": "constant", "epochs": s["vlm_epochs"], "batch_size": 64,
                        "eval_every": s["eval_every"], "checkpoint_every": 100, "log_every": 20},
              "score": {"batch_size": 64}}
    return {
        "experiment": {"name": "demo", "dir": str(out), "seed": 0},
        "data": {"source": "synthetic", "options": {"users": s["users"], "items": s["items"],
                                                    "interactions_per_user": s["interactions"],
                                                    "noise": 0.0, "drift": 0.0, "seed": 0}},
        # the paper's protocol: disjoint training, validation and test users
        "split": {"protocol": "paper", "user_fractions": [0.8, 0.1, 0.1], "negatives": 20, "valid_negatives": 4,
                  "seed": 0},
        "item_summaries": {"model": llava, "template": "fusion", "max_new_tokens": 12, "batch_size": 32},
        "user_summaries": {"model": {"name_or_path": str(models["llm"]), "dtype": "float32"},
                           "block_size": 3, "max_history": 9, "max_new_tokens": 16, "batch_size": 64},
        "models": {
            "pop": {"kind": "pop"},
            "gru4rec": {"kind": "gru4rec", **seq},
            "sasrec": {"kind": "sasrec", **seq},
            "mmrec_text": {**ctr, "variant": "text"},
            "mmrec_text_image": {**ctr, "variant": "text_image"},
            "mmrec": {**ctr, "variant": "mmrec"},
            "llava_zero_shot": {"kind": "vlm", "variant": "zero_shot", "preference_source": "truth", "model": llava},
            # The recommender stage alone: it reads the benchmark's true preference sentence, an upper bound for
            # what the preference summarizer could give it.
            "mllm_msr": {"kind": "vlm", "variant": "mllm_msr", "preference_source": "truth", **recipe},
            "tallrec": {"kind": "vlm", "variant": "tallrec", "preference_source": "truth", **recipe},
            # The whole chain: it reads the tiny LLM's recurrent preferences (summarize-users), as the paper does.
            **({"mllm_msr_generated": {"kind": "vlm", "variant": "mllm_msr", "preference_source": "summaries",
                                       **recipe}} if generated else {}),
        },
        "eval": {"ks": [1, 5, 10], "stages": ["test"]},
        "report": {"title": "mmrec demo (synthetic benchmark, tiny models)", "gallery_users": 6},
    }


# what each model's prompt says about the user (the `reads` column of the results table)
PREFERENCE_TEXT = {"truth": "true sentence", "summaries": "tiny LLM's", "history": "history titles"}


def reads(cfg: ExperimentConfig, name: str) -> str:
    """Which preference text a VLM recommender read; '-' for models that read none."""
    model = cfg.model(name)
    return PREFERENCE_TEXT.get(str(getattr(model, "preference_source", "")), "-") if model.kind == "vlm" else "-"


def results_table(cfg: ExperimentConfig, stage: str = "test") -> str:
    """HR/NDCG/MRR/AUC of every run, read back from metrics/<run>.json, with the preference text each read."""
    paths = cfg.paths
    cols = ["hr@1", "hr@5", "ndcg@10", "mrr@10", "auc"]
    lines = [f"{'model':<19} {'reads':<14} " + " ".join(f"{c:>8}" for c in cols)]
    for name in cfg.model_names():
        f = paths.metrics(name)
        if not f.is_file():
            continue
        metrics = json.loads(f.read_text())["metrics"].get(stage, {})
        lines.append(f"{name:<19} {reads(cfg, name):<14} "
                     + " ".join(f"{metrics.get(c, float('nan')):>8.4f}" for c in cols))
    return "\n".join(lines)


def timing_line(pipe: Pipeline, wall: float, cpu: float) -> str:
    """The time of this invocation, and the CPU time of every stage as recorded when it ran (what a fresh demo
    costs). On free cores the wall time is about the CPU time divided by torch's thread count."""
    import torch

    from mmrec.io import read_json

    stamps = [pipe._stamp(stage) for stage in pipe.stages]
    total = sum(read_json(f).get("cpu_seconds", 0.0) for f in stamps if f.is_file())
    return (f"Time: this run {wall:.0f} s wall, {cpu:.0f} s CPU; all stages as they ran: {total:.0f} s CPU "
            f"({torch.get_num_threads()} torch thread(s): a wall time well above CPU time / threads means the cores "
            "were busy)")


def notes(cfg: ExperimentConfig) -> str:
    """How to read the demo's table: which rows learn, and why the summarizers cannot help here."""
    chain = ("`mllm_msr_generated` reads the tiny LLM's preferences, as the paper's pipeline does: the gap to "
             "`mllm_msr` is what the summarizer loses." if "mllm_msr_generated" in cfg.model_names() else
             "`mmrec demo --generated` adds `mllm_msr_generated`, the same recommender reading the tiny LLM's "
             "preferences as the paper's pipeline does (about 3 more CPU minutes).")
    return ("Reading the table: the tiny models have random weights, so their item summaries and user preferences are "
            "meaningless text (the truth metrics above: they name the true colour and pattern only by chance). "
            "`mllm_msr` and `tallrec` therefore read the benchmark's true preference sentence instead: an upper "
            "bound for the preference summarizer, which shows the recommender stage learning with the measured tiny "
            "recipe. `mllm_msr` sees each candidate's image, where the colour (the strongest signal) is; `tallrec` "
            "is the same recipe without the image; `llava_zero_shot` is the untrained model (chance: AUC 0.5). "
            + chain + " The ID- and history-based baselines (GRU4Rec, SASRec, MMREC's CTR head) learn this clean "
            "benchmark from which items co-occur in the training users' histories.")


def main(args: argparse.Namespace) -> int:
    from mmrec.io import write_text
    from mmrec.pipeline import Pipeline, cpu_seconds
    from mmrec.truth import format_truth, read_truth

    t0, cpu0 = time.time(), cpu_seconds()
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # Two threads train the tiny LLaVA 1.45x faster than one on a free 2-core machine; more only synchronise
        # small matmuls. OMP_NUM_THREADS, when set, decides (the tests set 1).
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    out: Path = args.out
    models = build_tiny_models(out / "models")
    config_path = out / "demo.yaml"
    header = "# Written by `mmrec demo`; re-run with: mmrec run " + str(config_path) + "\n"
    config = demo_config(out, models, args.size, args.generated)
    write_text(header + yaml.safe_dump(config, sort_keys=False), config_path)
    cfg = ExperimentConfig.load(config_path)
    cfg.validate_all()
    pipe = Pipeline(cfg, str(config_path), [])
    pipe.run(dry_run=args.dry_run)
    if args.dry_run:
        return 0
    paths = cfg.paths
    print("\nResults on the test candidates (1 target + 20 sampled negatives per held-out test user; "
          "protocol and hashes in metrics/*.json and the report):")
    print(results_table(cfg))
    truth = read_truth(paths)
    if truth:
        print("\n" + format_truth(truth))
    print("\n" + textwrap.fill(notes(cfg), 118))
    print(f"\nReport: {paths.report_html.resolve()}")
    print(timing_line(pipe, time.time() - t0, cpu_seconds() - cpu0))
    print("\n" + REAL_RUN)
    return 0
