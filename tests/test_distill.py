"""Distillation (DLLM2Rec-style): the item weights and the BCE by hand, the teacher-signals stage (only training
data, resume after a crash, shards), the id join and the teacher-hash check, and the CLI end to end."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.distill.config import DistillSection
from mmrec.distill.loss import item_weights, ranking_loss
from mmrec.errors import ConfigError, DataError
from mmrec.experiment import ExperimentConfig
from tests.crash import crash_on_call


# -- weights and loss ----------------------------------------------------------------------------------------
def test_item_weights_by_hand():
    """ranks 1,2,3; P(Yes) .9,.6,.3; only the second item in the student's top-K; DLLM2Rec's gammas .3/.5/.1."""
    ranks = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    conf = torch.tensor([[0.9, 0.6, 0.3, 0.0]])
    cons = torch.tensor([[False, True, False, False]])
    mask = torch.tensor([[True, True, True, False]])  # the 4th slot is padding
    w = item_weights(ranks, conf, cons, mask, DistillSection(teacher="t"))
    # position: e^-1, e^-2, e^-3 over their sum 0.553001 = .665241, .244728, .090031
    # confidence: .9/1.8, .6/1.8, .3/1.8 = .5, .333333, .166667; consistency: 0, 1, 0
    # mix .3 pos + .5 conf + .1 cons = .449572, .340085, .110343 (sum .9) -> / .9
    assert w.tolist()[0] == pytest.approx([0.499525, 0.377872, 0.122603, 0.0], abs=1e-5)
    only_rank = item_weights(ranks, conf, cons, mask, DistillSection(teacher="t", confidence=False, consistency=False))
    assert only_rank.tolist()[0] == pytest.approx([0.665241, 0.244728, 0.090031, 0.0], abs=1e-5)
    # no teacher item in the student's top-K: the consistency term is 0 everywhere, the others still count
    none = item_weights(ranks, conf, torch.zeros_like(cons), mask, DistillSection(teacher="t", position=False))
    assert none.tolist()[0] == pytest.approx([0.5, 1 / 3, 1 / 6, 0.0], abs=1e-5)


def test_ranking_loss_is_the_correct_bce():
    """-log σ(s_pos) - log(1 - σ(s_neg)), not the reference code's log σ(1 - s_neg)."""
    emb = torch.nn.Embedding(4, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    hidden = torch.tensor([[1.0, 0.5]])
    loss = ranking_loss(hidden, emb, torch.tensor([[1, 2]]), torch.tensor([[3, 3]]), torch.tensor([[0.75, 0.25]]))

    def sig(x):
        return 1 / (1 + math.exp(-x))

    # scores: item1 2.0, item2 0.5, negative item3 -1.0
    neg = -math.log(1 - sig(-1.0))
    want = 0.75 * (-math.log(sig(2.0)) + neg) + 0.25 * (-math.log(sig(0.5)) + neg)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_distill_section_errors_name_the_key():
    with pytest.raises(ConfigError, match="student_run"):
        ExperimentConfig.from_mapping({"models": {"t": {"kind": "vlm"}, "s": {
            "kind": "sasrec", "distill": {"teacher": "t", "candidates": "both"}}}}).model("s")
    with pytest.raises(ConfigError, match="models.s.distill.top_kk"):
        ExperimentConfig.from_mapping({"models": {"s": {"kind": "sasrec", "distill": {"teacher": "t", "top_kk": 3}}}}
                                      ).model("s")


# -- the signals stage, with a stand-in teacher ----------------------------------------------------------------
class FakeContext:
    def preference(self, user, stage):
        assert stage == "train", "a training signal must read the train-stage preference"
        return f"likes {user}"

    def title(self, item):
        return f"title {item}"


class FakeEncoder:
    def __init__(self):
        self.context = FakeContext()


class FakeTeacher:
    """P(Yes) from a hash of (user, item), so runs are comparable; counts the rows it scores."""

    def __init__(self):
        self.encoder = FakeEncoder()
        self.scored = 0

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        self.scored += len(rows)
        return np.array([(zlib.crc32(f"{u}\0{i}".encode()) % 1000) / 1000
                         for u, i in zip(rows["user_id"], rows["item_id"])])


def make_experiment(root, dataset, distill=None, epochs=1):
    from mmrec.data.splits import SplitConfig, make_split

    cfg = ExperimentConfig.from_mapping({
        "experiment": {"dir": str(root), "seed": 0},
        "data": {"path": str(dataset)},
        "split": {"protocol": "loo", "negatives": 20, "seed": 0},
        "models": {
            "teacher": {"kind": "vlm", "variant": "zero_shot", "preference_source": "truth",
                        "model": {"name_or_path": str(root / "no_model")}},
            "student": {"kind": "sasrec", "hidden_size": 16, "inner_size": 32, "max_len": 10, "epochs": epochs,
                        "patience": epochs, "lr": 0.01,
                        "batch_size": 64, "device": "cpu",
                        "distill": {"teacher": "teacher", "examples": "last", "last_k": 2, "n_sampled": 5,
                                    **(distill or {})}},
        },
        "eval": {"stages": ["test"]},
    }, source=str(root / "config.yaml"))
    make_split(dataset, SplitConfig(protocol="loo", negatives=20, seed=0), cfg.split_dir)
    return cfg


def test_signals_hold_only_training_data(tmp_path, synthetic_dataset):
    from mmrec.data.splits import load_split
    from mmrec.distill.signals import build_signals

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset)
    path, stats = build_signals(cfg, "student", scorer=FakeTeacher())
    table = pd.read_parquet(path)
    split = load_split(cfg.split_dir)
    ex = split.examples
    held = pd.concat([ex.loc[ex["stage"] != "train", ["user_id", "target"]].rename(columns={"target": "item_id"}),
                      split.candidates[["user_id", "item_id"]]])
    leaked = table.merge(held.astype(str), on=["user_id", "item_id"])
    assert leaked.empty, f"validation/test items in training signals: {leaked.head()}"
    train = ex[ex["stage"] == "train"]
    seqs = {u: list(h) + [t] for u, h, t in zip(train["user_id"], train["history"], train["target"])}
    train_items = {i for s in seqs.values() for i in s}
    assert set(table["item_id"]) <= train_items
    for (user, pos), rows in table.groupby(["user_id", "position"]):
        seq = seqs[user]
        assert pos >= len(seq) - 2 and rows["target_id"].iloc[0] == seq[pos]
        assert set(rows["item_id"]).isdisjoint(seq[:pos])            # never the prefix
        assert (rows["source"] == "target").sum() == 1 and len(rows) == 6
        assert rows["rank"].tolist() == list(range(1, 7)) and rows["score"].is_monotonic_decreasing
    assert stats.complete and stats.pairs <= len(table)


def test_student_top_m_candidates(tmp_path, synthetic_dataset):
    """`candidates: both`: the plain student's top-M (allowed items only) plus sampled items, never duplicated."""
    from finetune.sequential import train
    from mmrec.data.splits import load_split
    from mmrec.distill.signals import build_signals, held_out_items

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset,
                          distill={"candidates": "both", "student_run": "plain", "top_m": 4, "n_sampled": 3})
    raw = {**cfg.raw, "models": {"plain": {k: v for k, v in cfg.raw["models"]["student"].items() if k != "distill"},
                                 **cfg.raw["models"]}}
    cfg = ExperimentConfig.from_mapping(raw, source=cfg.source)
    train(cfg, "plain", tmp_path / "exp" / "checkpoints" / "plain")
    path, _ = build_signals(cfg, "student", scorer=FakeTeacher())
    table = pd.read_parquet(path)
    held = held_out_items(load_split(cfg.split_dir))
    for (user, _), rows in table.groupby(["user_id", "position"]):
        counts = rows["source"].value_counts().to_dict()
        assert counts == {"target": 1, "student": 4, "sampled": 3} and rows["item_id"].is_unique
        assert set(rows["item_id"]).isdisjoint(held.get(user, set()))


def test_signals_resume_after_a_crash_and_shard(tmp_path, synthetic_dataset, monkeypatch):
    from mmrec.distill import signals

    monkeypatch.setattr(signals, "USERS_PER_BATCH", 8)
    whole, _ = signals.build_signals(make_experiment(tmp_path / "a", synthetic_dataset), "student",
                                     scorer=FakeTeacher())

    cfg = make_experiment(tmp_path / "b", synthetic_dataset)
    teacher = FakeTeacher()
    real = teacher.score
    teacher.score = crash_on_call(real, 4)
    with pytest.raises(KeyboardInterrupt):
        signals.build_signals(cfg, "student", scorer=teacher)
    scored_before = teacher.scored
    assert scored_before > 0
    teacher.score = real
    path, stats = signals.build_signals(cfg, "student", scorer=teacher)
    assert stats.scored_now == stats.pairs - scored_before       # nothing scored twice
    pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(whole))

    cfg = make_experiment(tmp_path / "c", synthetic_dataset)
    first, s0 = signals.build_signals(cfg, "student", signals.Shard(0, 2), scorer=FakeTeacher())
    assert not s0.complete and not first.exists()
    second, s1 = signals.build_signals(cfg, "student", signals.Shard(1, 2), scorer=FakeTeacher())
    assert s1.complete and s0.scored_now + s1.scored_now == s1.pairs
    pd.testing.assert_frame_equal(pd.read_parquet(second), pd.read_parquet(whole))


# -- the student side: id join, hash check ----------------------------------------------------------------------
def test_join_by_ids_and_hash_check(tmp_path, synthetic_dataset):
    from finetune.distill import Distiller, load_signals, teacher_lists
    from mmrec.data.sequences import training_sequences
    from mmrec.data.splits import load_split
    from mmrec.distill.signals import build_signals, sidecar
    from mmrec.io import read_json, write_json
    from mmrec.models.sequential import ItemVocab, windows

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset)
    path, _ = build_signals(cfg, "student", scorer=FakeTeacher())
    split = load_split(cfg.split_dir)
    seqs = training_sequences(split.examples)
    vocab = ItemVocab.from_sequences(seqs.tolist())
    samples = [w for s in seqs for w in windows(vocab.encode(s), 10)]
    d = Distiller.build(cfg, "student", vocab, seqs, samples, 10, split.candidates_sha256)
    # every distilled (window, column) predicts exactly the example's next item
    table, _ = load_signals(cfg, "student", split.candidates_sha256)
    examples, lists = teacher_lists(table, vocab, seqs, 10, "t")
    hits = 0
    for w, (cols, exs) in d.at.items():
        for j, e in zip(cols.tolist(), exs.tolist()):
            assert vocab.item_ids[samples[w][j + 1] - 1] == seqs[examples["user_id"][e]][examples["position"][e]]
            hits += 1
    assert hits == len(examples)
    # rows in another order give the same lists (joined by ids, never by position)
    shuffled = table.sample(frac=1.0, random_state=0)
    ex2, lists2 = teacher_lists(shuffled, vocab, seqs, 10, "t")

    def key(ex):
        return list(zip(ex["user_id"], ex["position"]))

    order = [key(ex2).index(k) for k in key(examples)]
    assert torch.equal(lists2.items[order], lists.items) and torch.equal(lists2.confidence[order], lists.confidence)
    # a signal whose next item is not the training sequence's is refused, naming user and position
    bad = table.copy()
    bad.loc[bad["user_id"] == bad["user_id"].iloc[0], "target_id"] = "nope"
    with pytest.raises(DataError, match="position .* next item 'nope'"):
        teacher_lists(bad, vocab, seqs, 10, "t")
    # signals of another teacher checkpoint are refused
    meta = read_json(sidecar(path))
    write_json({**meta, "teacher_hash": "0" * 64}, sidecar(path))
    with pytest.raises(DataError, match="teacher hash differs"):
        load_signals(cfg, "student", split.candidates_sha256)


@pytest.mark.slow
def test_distilled_student_ranks_the_teacher_top_items_higher(tmp_path, synthetic_dataset):
    """One epoch, same seed, with and without a large distillation weight: the distilled student puts the
    teacher's top-1 items further above the teacher's last ones, at the distilled examples."""
    from finetune.sequential import train
    from mmrec.distill.signals import build_signals
    from mmrec.models.sasrec import load_scorer

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset, distill={"weight": 5.0, "top_k": 6}, epochs=4)
    path, _ = build_signals(cfg, "student", scorer=FakeTeacher())
    table = pd.read_parquet(path)
    best, worst = table[table["rank"] == 1], table[table["rank"] == 6]
    margins = {}
    for name, raw in (("student", cfg.raw), ("plain", {**cfg.raw, "models": {**cfg.raw["models"], "plain": {
            k: v for k, v in cfg.raw["models"]["student"].items() if k != "distill"}}})):
        run_cfg = ExperimentConfig.from_mapping(raw, source=cfg.source)
        out = train(run_cfg, name, tmp_path / "exp" / "checkpoints" / name)
        scorer = load_scorer(run_cfg, name, out)
        gap = []
        for (user, pos), b in best.groupby(["user_id", "position"]):
            w = worst[(worst["user_id"] == user) & (worst["position"] == pos)]
            gap.append((user, pos, b["item_id"].iloc[0], w["item_id"].iloc[0]))
        seqs = {u: list(h) + [t] for u, h, t, s in zip(*(scorer_examples(cfg)[c] for c in
                                                         ("user_id", "history", "target", "stage"))) if s == "train"}
        hist = pd.DataFrame({"history": [seqs[u][:p] for u, p, _, _ in gap]})
        scores = scorer.score_catalogue(hist)
        index = {item: i for i, item in enumerate(scorer.item_ids)}
        margins[name] = float(np.mean([scores[r, index[b]] - scores[r, index[w]]
                                       for r, (_, _, b, w) in enumerate(gap)]))
    assert margins["student"] > margins["plain"] + 0.1, margins


def scorer_examples(cfg):
    from mmrec.data.splits import load_split

    return load_split(cfg.split_dir).examples


# -- CLI and pipeline --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_runs_the_signals_stage_with_a_tiny_vlm(tmp_path, synthetic_dataset, run_cli):
    import yaml

    from mmrec.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "llava", "llava", seed=0)
    cfg = make_experiment(tmp_path / "exp", synthetic_dataset, distill={"examples": "sample", "sample": 4,
                                                                         "n_sampled": 2, "embedding": "vlm"})
    raw = cfg.raw
    raw["models"]["teacher"]["model"]["name_or_path"] = str(model)
    config = tmp_path / "exp" / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, _, err = run_cli("distill-signals", config)
    assert code == 0, err
    files = [f for f in (tmp_path / "exp" / "distill").glob("teacher.*.parquet") if ".items." not in f.name]
    assert len(files) == 1
    table = pd.read_parquet(files[0])
    assert len(table.groupby(["user_id", "position"])) == 4 and table["score"].between(0, 1).all()
    assert len(list((tmp_path / "exp" / "distill").glob("teacher.*.items.safetensors"))) == 1
    code, _, err = run_cli("finetune", config, "--model", "student")
    assert code == 0, err
    code, _, err = run_cli("score", config, "--model", "student")  # the scorer rebuilds the teacher-augmented table
    assert code == 0, err


def test_pipeline_orders_teacher_signals_student(tmp_path):
    import yaml

    from mmrec.pipeline import Pipeline

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": {"dir": str(tmp_path / "exp")}, "data": {"path": str(tmp_path / "data")},
        "models": {"teacher": {"kind": "vlm"}, "student": {"kind": "sasrec", "distill": {"teacher": "teacher"}}}},
        sort_keys=False))
    p = Pipeline(ExperimentConfig.load(config), str(config), [])
    names = [s.name for s in p.stages]
    assert names.index("finetune:teacher") < names.index("signals:student") < names.index("finetune:student")
    by_name = {s.name: s for s in p.stages}
    assert "finetune:teacher" in by_name["signals:student"].deps
    assert "signals:student" in by_name["finetune:student"].deps
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"student": {"kind": "sasrec", "distill": {"teacher": "teacher"}},
                                              "teacher": {"kind": "vlm"}}}, sort_keys=False))
    with pytest.raises(ConfigError, match="listed before"):
        Pipeline(ExperimentConfig.load(bad), str(bad), [])


def test_report_table_pairs_teacher_plain_distilled_and_computes_the_gap(tmp_path):
    from eval.report_data import RunResult
    from eval.report_distill import distillation, markdown
    from mmrec.experiment import ExperimentPaths
    from mmrec.io import write_json

    paths = ExperimentPaths(tmp_path)
    base = {"kind": "sasrec", "hidden_size": 32, "device": "cpu"}
    runs = [RunResult("teacher", "teacher", None, "test", {"auc": 0.9})]
    for seed, (plain, dist) in enumerate([(0.7, 0.8), (0.8, 0.85)]):
        for model, value, cfg in (("sasrec", plain, base),
                                  ("sasrec_d", dist, {**base, "device": "auto", "distill": {"teacher": "teacher"}})):
            run = f"{model}@seed{seed}"
            write_json({"config": cfg}, paths.checkpoint(run) / "run.json")
            runs.append(RunResult(run, model, seed, "test", {"auc": value}))
    rows = distillation(paths, runs, ["auc"])
    assert [(r["model"], r["plain"], r["teacher"]) for r in rows] == [("sasrec_d", "sasrec", "teacher")]
    # per seed: (0.8 - 0.7) / (0.9 - 0.7) = 0.5 and (0.85 - 0.8) / (0.9 - 0.8) = 0.5
    assert rows[0]["gap"]["per_seed"] == pytest.approx([0.5, 0.5]) and rows[0]["gap"]["mean"] == pytest.approx(0.5)
    assert "| sasrec_d | teacher | sasrec | AUC |" in "\n".join(markdown(rows))
    # candidates/s per model (as `mmrec report` reads them from the scores files), on the model's first row only
    speed = {"teacher": {"rate": 400.0, "clock": "cpu"}, "sasrec": {"rate": 200_000.0, "clock": "cpu"},
             "sasrec_d": {"rate": 500_000.0, "clock": "cpu"}}
    rows = distillation(paths, runs, ["auc", "ndcg@10"], speed)
    table = "\n".join(markdown(rows))
    assert "| teacher cand/s | plain cand/s | distilled cand/s | x teacher |" in table
    assert "| 400 | 200,000 | 500,000 | 1,250x |" in table and rows[1]["speed"] is None
    # a teacher rated per wall second (scored on a GPU) and a student per CPU second: no multiple across clocks
    gpu_teacher = {**speed, "teacher": {"rate": 4000.0, "clock": "wall"}}
    assert "| 4,000 (wall) | 200,000 | 500,000 | – |" in "\n".join(markdown(distillation(paths, runs, ["auc"],
                                                                                              gpu_teacher)))
    assert "| – | – | – | – |" in "\n".join(markdown(distillation(paths, runs, ["auc"], {})))


def test_new_signals_make_a_new_student_run(tmp_path, synthetic_dataset):
    """The student's run fingerprint covers the signals table: after the signals are scored again, a finished
    student is refused (`--no-resume` replaces it) instead of being kept as if it had learnt from them."""
    import shutil

    from finetune.sequential import train
    from mmrec.distill.signals import build_signals, sidecar

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset)
    path, _ = build_signals(cfg, "student", scorer=FakeTeacher())
    out = tmp_path / "exp" / "checkpoints" / "student"
    train(cfg, "student", out)
    train(cfg, "student", out)  # same signals: the finished run is kept
    for p in (path, sidecar(path)):
        p.unlink()
    shutil.rmtree(tmp_path / "exp" / "cache")
    teacher = FakeTeacher()
    teacher.score = lambda rows: np.linspace(0.1, 0.9, len(rows))  # another teacher's scores
    build_signals(cfg, "student", scorer=teacher)
    with pytest.raises(ConfigError, match="no-resume"):
        train(cfg, "student", out)


def test_distilled_ctr_head_ranks_the_teacher_top_items_higher(tmp_path, synthetic_dataset):
    """`kind: ctr` with a distill section: same seed with and without a large distillation weight; the
    distilled head puts the teacher's top-1 items further above the teacher's 6th at the distilled examples."""
    from finetune.ctr import train
    from mmrec.data.splits import load_split
    from mmrec.distill.signals import build_signals
    from mmrec.models.ctr import load_scorer

    cfg = make_experiment(tmp_path / "exp", synthetic_dataset, distill={"weight": 5.0, "top_k": 6})
    ctr = {"kind": "ctr", "variant": "id_only", "epochs": 3, "patience": 3, "device": "cpu", "history_len": 5,
           "lr": 0.01, "id_dropout": 0.0}
    models = {"teacher": cfg.raw["models"]["teacher"], "plain": ctr,
              "student": {**ctr, "distill": cfg.raw["models"]["student"]["distill"]}}
    cfg = ExperimentConfig.from_mapping({**cfg.raw, "models": models}, source=cfg.source)
    path, _ = build_signals(cfg, "student", scorer=FakeTeacher())
    table = pd.read_parquet(path)
    best = table[table["rank"] == 1].reset_index(drop=True)
    worst = table[table["rank"] == 6].reset_index(drop=True)
    ex = load_split(cfg.split_dir).examples
    train_ex = ex[ex["stage"] == "train"]
    seqs = {u: list(h) + [t] for u, h, t in zip(train_ex["user_id"], train_ex["history"], train_ex["target"])}
    margins = {}
    for name in ("plain", "student"):
        out = train(cfg, name, tmp_path / "exp" / "checkpoints" / name)
        scorer = load_scorer(cfg, name, out)
        prefixes = [seqs[u][:p] for u, p in zip(best["user_id"], best["position"])]
        scores = scorer.score_catalogue(pd.DataFrame({"user_id": best["user_id"], "history": prefixes}))
        col = {item: i for i, item in enumerate(scorer.item_ids)}
        rows = np.arange(len(best))
        margins[name] = float(np.mean(scores[rows, [col[i] for i in best["item_id"]]]
                                      - scores[rows, [col[i] for i in worst["item_id"]]]))
    assert margins["student"] > margins["plain"] + 0.1, margins


def test_teacher_augmented_embedding_is_one_table_everywhere_and_reloads(tmp_path):
    """Lookups, the catalogue table (`weight`) and a save/load round trip all see base + w * proj(teacher)."""
    from safetensors.torch import load_file, save_file

    from mmrec.distill.embedding import attach
    from mmrec.models.sasrec import SASRec

    torch.manual_seed(0)
    teacher = torch.cat([torch.zeros(1, 6), torch.randn(5, 6)])
    model = attach(SASRec(5, max_len=4, hidden_size=8, num_layers=1, num_heads=1, inner_size=8), teacher, 0.2)
    emb = model.item_embedding
    ids = torch.tensor([1, 3, 5])
    want = emb.base.weight[ids] + 0.2 * teacher[ids] @ emb.proj.weight.T
    assert torch.allclose(emb(ids), want) and torch.allclose(emb.weight[ids], want)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    weights = load_file(str(tmp_path / "m.safetensors"))
    again = attach(SASRec(5, max_len=4, hidden_size=8, num_layers=1, num_heads=1, inner_size=8),
                   weights["item_embedding.teacher"], 0.2)
    again.load_state_dict(weights)
    assert torch.allclose(again.item_embedding(ids), want)
