"""Negative sampling: exclusion of the user's items, distinctness, distributions, infeasibility, fallback."""
import numpy as np
import pyarrow as pa
import pytest

from mmrec.data import candidates as cand
from mmrec.errors import DataError


def _seen(pairs, n_users, n_items):
    u = np.array([p[0] for p in pairs])
    i = np.array([p[1] for p in pairs])
    return cand.UserItems.build(u, i, n_users, n_items)


def _all(g, users, n, seen, weights=None):
    return np.concatenate([neg for _, neg in cand.sample_negatives(g, users, n, seen, weights)])


def test_user_items_lookup():
    seen = _seen([(0, 1), (0, 3), (2, 0), (0, 1)], 3, 5)
    assert seen.contains(np.array([0, 0, 1, 2]), np.array([1, 2, 1, 0])).tolist() == [True, False, False, True]
    assert seen.counts().tolist() == [2, 0, 1]
    assert seen.items_of(0).tolist() == [1, 3]


def test_negatives_exclude_user_items_and_are_distinct():
    g = np.random.default_rng(0)
    n_users, n_items = 50, 40
    pairs = [(u, i) for u in range(n_users) for i in np.random.default_rng(u).choice(n_items, 15, replace=False)]
    seen = _seen(pairs, n_users, n_items)
    users = np.repeat(np.arange(n_users), 2)  # two rows per user (e.g. valid and test)
    neg = _all(g, users, 20, seen)
    assert neg.shape == (100, 20)
    assert not seen.contains(np.repeat(users, 20).reshape(neg.shape), neg).any()
    assert all(len(set(row)) == 20 for row in neg)


def test_seeded_and_chunk_independent_of_order_of_calls():
    seen = _seen([(0, 0)], 1, 30)
    a = _all(np.random.default_rng(5), np.zeros(3, int), 10, seen)
    b = _all(np.random.default_rng(5), np.zeros(3, int), 10, seen)
    c = _all(np.random.default_rng(6), np.zeros(3, int), 10, seen)
    assert (a == b).all() and not (a == c).all()


def test_uniform_and_popularity_distributions():
    n_items = 10
    seen = _seen([(0, 9)], 1, n_items)  # item 9 is the user's own
    users = np.zeros(20000, dtype=int)
    uni = np.bincount(_all(np.random.default_rng(1), users, 1, seen).ravel(), minlength=n_items)
    assert uni[9] == 0 and np.allclose(uni[:9] / 20000, 1 / 9, atol=0.015)
    counts = np.array([1, 2, 4, 8, 0, 1, 1, 1, 1, 5])
    w = cand.item_weights("popularity", counts, alpha=1.0)
    pop = np.bincount(_all(np.random.default_rng(2), users, 1, seen, w).ravel(), minlength=n_items)
    expected = np.where(np.arange(n_items) == 9, 0, counts) / counts[:9].sum()
    assert pop[4] == 0 and pop[9] == 0  # never-interacted item has weight 0; own item excluded
    assert np.allclose(pop / 20000, expected, atol=0.015)
    assert cand.item_weights("uniform", counts) is None
    assert np.allclose(cand.item_weights("popularity", counts, 0.5)[:4], np.sqrt([1, 2, 4, 8]))


def test_exact_fallback_when_almost_everything_is_seen():
    n_items = 200
    seen = _seen([(0, i) for i in range(n_items) if i not in (7, 50, 199)], 1, n_items)
    neg = _all(np.random.default_rng(0), np.zeros(4, int), 3, seen)
    assert all(sorted(row) == [7, 50, 199] for row in neg)


def test_infeasible_names_the_user():
    seen = _seen([(1, i) for i in range(8)], 2, 10)
    names = pa.array(["alice", "bob"])
    with pytest.raises(DataError, match=r"'bob' has 2.*lower the number"):
        cand.check_feasible(np.array([0, 1]), 3, seen, None, names, "test")
    cand.check_feasible(np.array([0, 1]), 2, seen, None, names, "test")  # exactly enough is fine
    w = np.ones(10)
    w[8] = 0.0  # only item 9 is drawable for bob under popularity sampling
    with pytest.raises(DataError, match="non-zero popularity"):
        cand.check_feasible(np.array([1]), 2, seen, w, names, "valid")
