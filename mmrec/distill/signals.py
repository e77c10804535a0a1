"""The teacher-signals stage: a trained `kind: vlm` teacher scores candidates of training examples, written as
`<dir>/distill/<teacher run>.<key>.parquet` plus a `.json` sidecar saying what produced it.

A training example is a training user's prefix `seq[:position]` and its next item `seq[position]`. Its candidates
are the next item itself plus `sampled` training items and/or the top-M of a plain student run. Only training
data ever reaches a signal: candidates are items of training sequences, never the prefix, and never an item of
the user's validation or test rows (targets and persisted candidates); the teacher reads the user's preference of
the `train` stage. Each table row: user_id, position, target_id, item_id, source, score (P(Yes)), rank (1 = the
teacher's best of the example).

Cost: one VLM forward per distinct (user, candidate) pair. The teacher's prompt is the user's train-stage
preference plus the candidate, the same at every position, so scores are cached by content (teacher hash,
preference, item) under `<dir>/cache/distill/`: a crashed run resumes, positions of one user share forwards, and
`--shard i/n` processes split the users (the last to finish writes the table).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.config import to_dict
from mmrec.distill.config import DistillSection
from mmrec.errors import ConfigError, DataError, MmrecError
from mmrec.experiment import ExperimentConfig, ExperimentPaths
from mmrec.io import atomic_path, hash_json, write_json
from mmrec.progress import get_logger, progress
from mmrec.seeding import rng
from mmrec.summarize.shard import Shard

log = get_logger("distill.signals")

SIGNAL_COLUMNS = ["user_id", "position", "target_id", "item_id", "source", "score", "rank"]
USERS_PER_BATCH = 16
ROWS_PER_CALL = 256  # least uncached (user, item) pairs per scorer call


def distill_section(cfg: ExperimentConfig, name: str) -> DistillSection:
    """The `distill:` section of student `name`, its teacher checked to be an earlier `kind: vlm` model."""
    dcfg = getattr(cfg.model(name), "distill", None)
    if dcfg is None:
        raise ConfigError(f"{cfg.source}: model '{name}' has no 'distill' section; add one naming its teacher")
    names = cfg.model_names()
    if dcfg.teacher not in names:
        raise ConfigError(f"{cfg.source}: key 'models.{name}.distill.teacher' names no model of this config: "
                          f"{dcfg.teacher!r} (have: {', '.join(names)})")
    if cfg.model(dcfg.teacher).kind != "vlm":
        raise ConfigError(f"{cfg.source}: key 'models.{name}.distill.teacher': {dcfg.teacher!r} is of kind "
                          f"{cfg.model(dcfg.teacher).kind!r}; the teacher must be a kind: vlm model")
    if names.index(dcfg.teacher) > names.index(name):
        raise ConfigError(f"{cfg.source}: models.{dcfg.teacher} must be listed before its student models.{name} "
                          "(the pipeline trains models in the order they are listed)")
    return dcfg


def teacher_run(cfg: ExperimentConfig, dcfg: DistillSection) -> str:
    """The teacher run a student run of `cfg` distils: `teacher_run`, else the teacher's run of the same seed."""
    if dcfg.teacher_run:
        return dcfg.teacher_run
    return ExperimentPaths.run_id(dcfg.teacher, cfg.seed if cfg.experiment.seeds else None)


def teacher_hash(cfg: ExperimentConfig, dcfg: DistillSection, run: str) -> str:
    """What identifies the teacher's scores: its base model's files, its adapter's files, its prompt settings."""
    from mmrec.summarize.cache import _file_digest, model_fingerprint

    mcfg = cfg.model(dcfg.teacher)
    ckpt = cfg.paths.checkpoint(run)
    adapter = ckpt / "adapter"
    files = {}
    if mcfg.finetune:
        if not adapter.is_dir():
            raise MmrecError(f"{ckpt}: no trained teacher '{run}' (adapter/ missing); run "
                             f"`mmrec finetune {cfg.source} --model {dcfg.teacher}` first")
        files = {str(p.relative_to(adapter)): _file_digest(p) for p in sorted(adapter.rglob("*")) if p.is_file()}
    settings = {k: v for k, v in to_dict(mcfg).items() if k not in ("train", "score")}
    settings["max_length"] = mcfg.train.max_length
    return hash_json({"base": model_fingerprint(mcfg.model), "adapter": files, "settings": settings})


def signals_path(cfg: ExperimentConfig, dcfg: DistillSection, run: str, candidates_sha256: str) -> Path:
    """Content-keyed place of the signals: the teacher run plus everything that decides which rows are scored."""
    key = hash_json({"teacher_run": run, "signals": dcfg.signal_settings(), "split": candidates_sha256})[:12]
    return cfg.paths.root / "distill" / f"{run}.{key}.parquet"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


# -- which examples and candidates ----------------------------------------------------------------------------
def training_examples(split: Any, dcfg: DistillSection) -> pd.DataFrame:
    """(user_id, position, target_id, prefix) of the training examples to score, in user order."""
    from mmrec.data.sequences import training_sequences

    rows = []
    for user, seq in training_sequences(split.examples).items():
        first = 1 if dcfg.examples != "last" else max(1, len(seq) - dcfg.last_k)
        rows += [(str(user), t, str(seq[t]), [str(i) for i in seq[:t]]) for t in range(first, len(seq))]
    out = pd.DataFrame(rows, columns=["user_id", "position", "target_id", "prefix"])
    if dcfg.examples == "sample" and len(out) > dcfg.sample:
        keep = np.sort(rng(dcfg.seed, "distill", "examples").choice(len(out), dcfg.sample, replace=False))
        out = out.iloc[keep].reset_index(drop=True)
    if out.empty:
        raise DataError(f"{split.root}: no training sequence has two items: no training example to distil")
    return out


def held_out_items(split: Any) -> dict[str, set[str]]:
    """Per user, every item of their validation and test rows (targets and persisted candidates)."""
    ex = split.examples[split.examples["stage"] != "train"]
    out: dict[str, set[str]] = {}
    for user, target in zip(ex["user_id"].astype(str), ex["target"].astype(str)):
        out.setdefault(user, set()).add(target)
    cand = split.candidates
    for user, item in zip(cand["user_id"].astype(str), cand["item_id"].astype(str)):
        out.setdefault(user, set()).add(item)
    return out


def _sample(pool: np.ndarray, n: int, banned: set[str], g: np.random.Generator) -> list[str]:
    """Up to n distinct pool items outside `banned`, by rejection (no per-example copy of a large catalogue)."""
    picked: dict[str, None] = {}
    for _ in range(8):
        for i in g.integers(0, len(pool), size=2 * n + 8):
            item = pool[i]
            if item not in banned:
                picked[item] = None
                if len(picked) == n:
                    return list(picked)
    return list(picked)


def candidate_rows(cfg: ExperimentConfig, split: Any, dcfg: DistillSection, examples: pd.DataFrame) -> pd.DataFrame:
    """One row per (example, candidate): user_id, position, target_id, item_id, source."""
    from mmrec.data.sequences import training_sequences

    pool = np.array(sorted({str(i) for seq in training_sequences(split.examples) for i in seq}), dtype=object)
    held = held_out_items(split)
    tops = _student_top(cfg, split, dcfg, examples, held) if dcfg.candidates != "sampled" else None
    rows = []
    for e, (user, pos, target, prefix) in enumerate(examples.itertuples(index=False)):
        banned = held.get(user, set()) | set(prefix) | {target}
        rows.append((user, pos, target, target, "target"))
        chosen = set()
        if tops is not None:
            for item in tops[e]:
                chosen.add(item)
                rows.append((user, pos, target, item, "student"))
        if dcfg.candidates != "student":
            g = rng(dcfg.seed, "distill", "candidates", user, pos)
            rows += [(user, pos, target, item, "sampled") for item in _sample(pool, dcfg.n_sampled, banned | chosen, g)]
    return pd.DataFrame(rows, columns=["user_id", "position", "target_id", "item_id", "source"])


def _student_top(cfg: ExperimentConfig, split: Any, dcfg: DistillSection, examples: pd.DataFrame,
                 held: dict[str, set[str]]) -> list[list[str]]:
    """Per example, the top-M items of the plain student run over the catalogue, allowed items only."""
    import importlib

    from mmrec.experiment import MODEL_KINDS

    run = str(dcfg.student_run)
    name = run.split("@seed")[0]
    if name not in cfg.model_names() or cfg.model(name).kind not in ("sasrec", "gru4rec"):
        raise ConfigError(f"{cfg.source}: distill.student_run {run!r} is not a run of a sasrec or gru4rec model")
    module = importlib.import_module(MODEL_KINDS[cfg.model(name).kind].split(":")[0])
    scorer = module.load_scorer(cfg, name, cfg.paths.checkpoint(run))
    items = np.array(scorer.item_ids, dtype=object)
    out: list[list[str]] = []
    for start in progress(range(0, len(examples), 256), desc=f"student top-{dcfg.top_m}", unit="batch"):
        part = examples.iloc[start:start + 256]
        scores = scorer.score_catalogue(pd.DataFrame({"history": part["prefix"].tolist()}))
        for row, (user, prefix, target) in enumerate(zip(part["user_id"], part["prefix"], part["target_id"])):
            banned = held.get(user, set()) | set(prefix) | {target}
            top = [items[j] for j in np.argsort(-scores[row], kind="stable")[: dcfg.top_m + len(banned)]]
            out.append([i for i in top if i not in banned][: dcfg.top_m])
    return out


# -- scoring ------------------------------------------------------------------------------------------------
@dataclass
class SignalStats:
    examples: int
    rows: int
    pairs: int
    scored_now: int
    seconds: float
    cpu_seconds: float
    complete: bool

    @property
    def candidates_per_s(self) -> float | None:
        return self.scored_now / self.seconds if self.scored_now and self.seconds > 0 else None


def build_signals(cfg: ExperimentConfig, name: str, shard: Shard | None = None,
                  scorer: Any = None) -> tuple[Path, SignalStats]:
    """Score this shard's part of the student `name`'s teacher signals into the cache; write the table once every
    shard's part is there. `scorer` (a VLMScorer) is built from the teacher's checkpoint when not given."""
    from mmrec.data.splits import load_dataset_fingerprint, load_split
    from mmrec.models.vlm_context import MISSING_PREFERENCE
    from mmrec.summarize.cache import GenerationCache

    shard = shard or Shard()
    dcfg = distill_section(cfg, name)
    run = teacher_run(cfg, dcfg)
    split = load_split(cfg.split_dir)
    path = signals_path(cfg, dcfg, run, split.candidates_sha256)
    thash = teacher_hash(cfg, dcfg, run)
    if path.is_file() and sidecar(path).is_file():
        from mmrec.io import read_json

        if read_json(sidecar(path)).get("teacher_hash") == thash:
            log.info(f"{path}: signals of teacher {run} already written, kept")
            meta = read_json(sidecar(path))
            _item_embeddings(cfg, dcfg, run, split, path, scorer)
            return path, SignalStats(meta["examples"], meta["rows"], meta["pairs"], 0, 0.0, 0.0, True)
        log.info(f"{path}: written by another teacher checkpoint; scoring again")
    examples = training_examples(split, dcfg)
    rows = candidate_rows(cfg, split, dcfg, examples)

    if scorer is None:
        from mmrec.models.vlm_build import scorer_from_checkpoint

        scorer = scorer_from_checkpoint(cfg, dcfg.teacher, cfg.paths.checkpoint(run))
    ctx = scorer.encoder.context
    base = {"teacher": thash, "dataset": load_dataset_fingerprint(split.dataset_dir)}
    pairs = rows[["user_id", "item_id"]].drop_duplicates().sort_values(["user_id", "item_id"]).reset_index(drop=True)
    keys = [hash_json({**base, "preference": ctx.preference(u, "train"), "item": i, "title": ctx.title(i)})
            for u, i in zip(pairs["user_id"], pairs["item_id"])]
    pairs["key"] = keys
    cache = GenerationCache(cfg.paths.cache / "distill" / run, shard.writer)

    users = pairs["user_id"].unique()
    batches = [users[i:i + USERS_PER_BATCH] for i in range(0, len(users), USERS_PER_BATCH)]
    mine = [b for i, b in enumerate(batches) if shard.owns(i)]
    by_user = dict(tuple(pairs.groupby("user_id", sort=False)))
    todo = [b for b in mine if any(cache.records.get(k) is None for u in b for k in by_user[u]["key"])]
    total = sum(len(by_user[u]) for b in mine for u in b)
    t0, c0, scored = time.perf_counter(), time.process_time(), 0
    bar = progress(total=total, desc=f"distill-signals {run} {shard}", unit="cand")
    bar.update(total - sum(len(by_user[u]) for b in todo for u in b))
    # Uncached pairs of consecutive batches are scored together (a re-run after a crash, or candidates that share
    # pairs with an earlier artifact, leave few per user), one durable cache line per scorer call.
    pending: list[pd.DataFrame] = []
    done_pairs = 0
    for i, b in enumerate(todo):
        part = pd.concat([by_user[u] for u in b])
        pending.append(part[[cache.records.get(k) is None for k in part["key"]]])
        done_pairs += sum(len(by_user[u]) for u in b)
        if sum(map(len, pending)) < ROWS_PER_CALL and i < len(todo) - 1:
            continue
        rows_now = pd.concat(pending)
        scores = scorer.score(rows_now.assign(stage="train")) if len(rows_now) else np.empty(0)
        records = [{"key": k, "score": float(s)} if np.isfinite(s) else {"key": k, "error": MISSING_PREFERENCE}
                   for k, s in zip(rows_now["key"], scores)]
        cache.put_batch(records)
        scored += len(rows_now)
        bar.update(done_pairs)
        pending, done_pairs = [], 0
    bar.close()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    cache.reload()  # what other shards have finished
    stats = SignalStats(len(examples), len(rows), len(pairs), scored, seconds, cpu, False)
    missing = sum(cache.records.get(k) is None for k in keys)
    if missing:
        log.info(f"shard {shard} done; {missing} teacher scores of other shards are still missing: the last shard "
                 "to finish writes the signals")
        return path, stats
    score_of = {k: (cache.records[k].get("score", np.nan)) for k in keys}
    rows = rows.merge(pairs, on=["user_id", "item_id"], how="left")
    rows["score"] = [score_of[k] for k in rows.pop("key")]
    failed = int(rows["score"].isna().sum())
    if failed:
        log.warning(f"{failed} of {len(rows)} candidate rows could not be prompted (no preference or image): left out")
    table = rank_rows(rows.dropna(subset=["score"]))
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    from mmrec.io import sha256_file

    meta = {"teacher": dcfg.teacher, "teacher_run": run, "teacher_hash": thash, "student": name,
            "signals": dcfg.signal_settings(), "candidates_sha256": split.candidates_sha256,
            "examples": len(examples), "rows": len(table), "pairs": len(pairs), "left_out": failed,
            "table_sha256": sha256_file(path), "teacher_candidates_per_s": stats.candidates_per_s,
            "teacher_cpu_seconds_per_candidate": cpu / scored if scored else None}
    write_json(meta, sidecar(path))
    _item_embeddings(cfg, dcfg, run, split, path, scorer)
    stats.complete = True
    log.info(f"wrote {path}: {len(examples)} examples, {len(table)} rows, {len(pairs)} teacher forwards")
    return path, stats


def _item_embeddings(cfg: ExperimentConfig, dcfg: DistillSection, run: str, split: Any, path: Path,
                     scorer: Any) -> None:
    """With `distill.embedding: vlm`, the teacher's embedding of every training item next to the signals."""
    from mmrec.data.sequences import training_sequences
    from mmrec.distill.embedding import (
        embeddings_path,
        teacher_item_embeddings,
        write_item_embeddings,
    )

    if dcfg.embedding == "none" or all(p.is_file() for p in embeddings_path(path)):
        return
    if scorer is None:
        from mmrec.models.vlm_build import scorer_from_checkpoint

        scorer = scorer_from_checkpoint(cfg, dcfg.teacher, cfg.paths.checkpoint(run))
    items = sorted({str(i) for seq in training_sequences(split.examples) for i in seq})
    write_item_embeddings(path, items, teacher_item_embeddings(scorer, items))


def rank_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The table's rows in example order, each example's candidates ranked by teacher score (ties by item id)."""
    rows = rows.sort_values(["user_id", "position", "score", "item_id"], ascending=[True, True, False, True],
                            kind="stable").reset_index(drop=True)
    rows["rank"] = rows.groupby(["user_id", "position"], sort=False).cumcount() + 1
    rows["position"] = rows["position"].astype("int64")
    return rows[SIGNAL_COLUMNS]


def signals_stage(cfg: ExperimentConfig, name: str, seed_args: list[str], cli: Any) -> dict[str, Any]:
    """The `mmrec run` stage of student `name`'s signals: after its teacher's (and top-M student's) training."""
    dcfg = distill_section(cfg, name)
    deps = ["split", f"finetune:{dcfg.teacher}"]
    if dcfg.candidates != "sampled":
        deps.append(f"finetune:{str(dcfg.student_run).split('@seed')[0]}")
    sections = (f"models.{name}", f"models.{dcfg.teacher}", "experiment")

    def outputs() -> list[Path]:
        from mmrec.data.splits import CANDIDATES_FILE, SPLIT_FILE
        from mmrec.experiment import runs_of
        from mmrec.io import read_json

        split_file = cfg.split_dir / SPLIT_FILE
        if not split_file.is_file():
            return []
        sha = read_json(split_file)["files"][CANDIDATES_FILE]
        runs = runs_of(cfg, [name], cfg.experiment.seeds)
        return sorted({signals_path(c, dcfg, teacher_run(c, dcfg), sha) for _, _, c in runs})

    return {"name": f"signals:{name}", "sections": sections, "deps": tuple(deps), "outputs": outputs,
            "run": lambda fresh: cli("distill-signals", "--model", name, *seed_args)}
