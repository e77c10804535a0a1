"""Scoring internals: catalogue target ranks by hand, chunked resume, and scorer output checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from eval.score_cli import run_chunks, score_full, score_sampled, write_with_meta
from eval.throughput import THROUGHPUT_KEY, ScoringClock, fmt_rate, pooled_rate, read_throughput, scorer_device
from mmrec.errors import DataError
from mmrec.ranking import target_ranks


def test_target_ranks_by_hand() -> None:
    # items:           0    1    2    3    4
    mat = np.array([[0.9, 0.5, 0.5, 0.1, np.nan],   # target 1: one above (0), one tie (2), NaN item 4 below
                    [0.9, 0.5, 0.5, 0.1, 0.2],      # target 3 (0.1): all four other items above
                    [0.1, 0.2, np.nan, 0.3, 0.4]])  # target 2 is NaN: ranks last among all 5
    target = np.array([1, 3, 2])
    out = target_ranks(mat, target, None)
    assert out["n_greater"].tolist() == [1, 4, 4]
    assert out["n_tied"].tolist() == [1, 0, 0]
    assert out["n_ranked"].tolist() == [5, 5, 5]
    assert out["n_invalid"].tolist() == [1, 0, 1]
    # history pairs (row, item): row 0 {0}, row 1 {0, 1, 3, 0 again}, row 2 none
    masked = target_ranks(mat, target, (np.array([0, 1, 1, 1, 1]), np.array([0, 0, 1, 3, 0])))
    # row 0: item 0 masked -> nothing above, tie with 2; row 1: 0 and 1 masked, target 3 itself never masked
    assert masked["n_greater"].tolist() == [0, 2, 4]
    assert masked["n_masked"].tolist() == [1, 2, 0]
    assert masked["n_ranked"].tolist() == [4, 3, 5]


def test_target_outside_catalogue_is_a_miss() -> None:
    out = target_ranks(np.array([[0.3, 0.2]]), np.array([-1]), None)
    assert out["n_greater"].tolist() == [2] and out["n_ranked"].tolist() == [3] and np.isnan(out["score"][0])


class _Counting:
    """A scorer that scores item ids by their number and fails once after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None, wrong_length: bool = False):
        self.calls, self.fail_after, self.wrong_length = 0, fail_after, wrong_length
        self.item_ids = ["i0", "i1", "i2"]

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        s = candidates["item_id"].str[1:].astype(float).to_numpy()
        return s[:-1] if self.wrong_length else s

    def score_catalogue(self, examples: pd.DataFrame) -> np.ndarray:
        return np.tile([0.0, 1.0, 2.0], (len(examples), 1))


def _candidates(n_users: int) -> pd.DataFrame:
    rows = [(f"u{u}", "test", f"i{i}", int(i == 0)) for u in range(n_users) for i in range(3)]
    return pd.DataFrame(rows, columns=["user_id", "stage", "item_id", "label"])


def test_chunked_scoring_resumes_after_a_crash(tmp_path) -> None:
    cands = _candidates(10)
    crashing = _Counting(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        score_sampled(crashing, cands, batch_users=3, parts_dir=tmp_path / "parts", key="k", run="r")
    resumed = _Counting()
    df = score_sampled(resumed, cands, batch_users=3, parts_dir=tmp_path / "parts", key="k", run="r")
    assert resumed.calls == 2  # 4 chunks, 2 were saved before the crash
    assert df["score"].tolist() == [0.0, 1.0, 2.0] * 10
    # another key (e.g. a retrained checkpoint) discards the saved parts
    again = _Counting()
    score_sampled(again, cands, batch_users=3, parts_dir=tmp_path / "parts", key="other", run="r")
    assert again.calls == 4


def test_the_clock_times_the_scored_chunks_and_counts_the_resumed_ones(tmp_path) -> None:
    cands = _candidates(10)
    with pytest.raises(KeyboardInterrupt):
        score_sampled(_Counting(fail_after=2), cands, batch_users=3, parts_dir=tmp_path / "parts", key="k", run="r")
    clock = ScoringClock()
    score_sampled(_Counting(), cands, batch_users=3, parts_dir=tmp_path / "parts", key="k", run="r", clock=clock)
    assert (clock.candidates, clock.resumed_candidates) == (4 * 3, 6 * 3)  # users 6-9 scored now, 0-5 resumed
    assert clock.cpu_s >= 0 and clock.wall_s > 0


def test_throughput_is_written_with_the_scores_and_read_back(tmp_path) -> None:
    clock = ScoringClock(candidates=3000, cpu_s=0.01, wall_s=0.02)
    record = clock.record(_Counting())
    assert record["torch_threads"] >= 1 and record["device"] == "cpu"  # a scorer without a device runs on the CPU
    vlm_like = type("VLMLike", (), {"model": torch.nn.Linear(2, 2).to("meta")})()  # no `device`: its model's
    assert scorer_device(vlm_like) == "meta"
    path = write_with_meta(_candidates(1).assign(score=0.0), tmp_path / "s.parquet",
                           {"key": "x", THROUGHPUT_KEY: record})
    assert read_throughput(path) == record and read_throughput(tmp_path / "absent.parquet") is None
    pooled = pooled_rate([record, {**record, "candidates": 1000, "cpu_s": 0.03}, {"candidates": 0}])
    assert pooled["rate"] == pytest.approx(4000 / 0.04) and pooled["runs"] == 2 and pooled["devices"] == ["cpu"]
    assert pooled["clock"] == "cpu" and fmt_rate(pooled) == "100,000"
    assert pooled_rate([{"candidates": 5, "cpu_s": 0.0}]) is None and fmt_rate(None) == "–"


def test_throughput_on_an_accelerator_is_per_wall_second() -> None:
    """On a GPU the scorer's work is not CPU time (the host mostly waits): its rate is candidates per wall second,
    and so is the pooled rate of a model with any run on an accelerator."""
    gpu = {"candidates": 6000, "cpu_s": 0.5, "wall_s": 2.0, "torch_threads": 8, "device": "cuda:0"}
    cpu = {"candidates": 2000, "cpu_s": 4.0, "wall_s": 2.0, "torch_threads": 8, "device": "cpu"}
    pooled = pooled_rate([gpu])
    assert pooled["clock"] == "wall" and pooled["rate"] == pytest.approx(3000) and fmt_rate(pooled) == "3,000 (wall)"
    assert pooled_rate([gpu, cpu])["rate"] == pytest.approx(8000 / 4.0)
    assert pooled_rate([{**gpu, "wall_s": 0.0}]) is None


def test_interleaved_candidates_keep_the_file_order(tmp_path) -> None:
    cands = _candidates(4).sample(frac=1.0, random_state=0).reset_index(drop=True)
    df = score_sampled(_Counting(), cands, batch_users=2, parts_dir=tmp_path / "p", key="k", run="r")
    assert df[["user_id", "item_id"]].equals(cands[["user_id", "item_id"]])
    assert (df["score"] == cands["item_id"].str[1:].astype(float)).all()


def test_scorer_returning_wrong_length_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="one score per candidate"):
        score_sampled(_Counting(wrong_length=True), _candidates(2), 8, tmp_path / "p", "k", "r")


def test_score_full_stores_target_counts(tmp_path) -> None:
    # "zz" is not in the catalogue: nothing to mask for it
    ex = pd.DataFrame({"user_id": ["a", "b"], "stage": ["test", "test"], "history": [["i2", "zz"], []],
                       "target": ["i1", "i0"]})
    df = score_full(_Counting(), ex, mask_history=True, batch_users=1, parts_dir=tmp_path / "p", key="k", run="r")
    assert df["n_greater"].tolist() == [0, 2] and df["n_masked"].tolist() == [1, 0]


def test_score_full_ranks_the_experiment_catalogue_with_worst_case_for_unscorable_items(tmp_path) -> None:
    # the model scores i0..i2 (0, 1, 2); the experiment's catalogue also has i3 and i4, which it cannot score
    catalogue = ["i4", "i0", "i1", "i2", "i3"]
    ex = pd.DataFrame({"user_id": ["a", "b", "c"], "stage": "test", "history": [[], ["i3"], []],
                       "target": ["i0", "i1", "i4"]})
    df = score_full(_Counting(), ex, mask_history=True, batch_users=2, parts_dir=tmp_path / "p", key="k", run="r",
                    catalogue=catalogue)
    # every example is ranked over the whole catalogue (minus masked history), whatever the model scores
    assert df["n_ranked"].tolist() == [5, 4, 5] and df["n_masked"].tolist() == [0, 1, 0]
    # unscorable items never rank above a scored target: i0 (0.0) has i1, i2 above; i1 has i2 above
    assert df["n_greater"].tolist()[:2] == [2, 1] and df["n_tied"].tolist()[:2] == [0, 0]
    # an unscorable target ranks last (a miss), with no score
    assert df["n_greater"].iloc[2] == 4 and np.isnan(df["score"].iloc[2])
    assert df["n_unscored"].tolist() == [2, 1, 2] and df["n_invalid"].tolist() == [0, 0, 0]


def test_score_full_refuses_items_outside_the_experiment_catalogue(tmp_path) -> None:
    ex = pd.DataFrame({"user_id": ["a"], "stage": "test", "history": [[]], "target": ["i0"]})
    with pytest.raises(DataError, match="1 item.* not in the experiment's catalogue, e.g. 'i2'"):
        score_full(_Counting(), ex, mask_history=False, batch_users=2, parts_dir=tmp_path / "p", key="k", run="r",
                   catalogue=["i0", "i1"])


def test_run_chunks_with_no_work(tmp_path) -> None:
    assert run_chunks(0, lambda i: pd.DataFrame(), tmp_path / "p", "k", "nothing").empty
