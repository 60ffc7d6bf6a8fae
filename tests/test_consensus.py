"""The consensus of partitions (diffclust.consensus): HBGF and the Hungarian relabelling."""

import numpy as np
import pytest

from diffclust import evaluate
from diffclust.consensus import align_partitions, consensus_partition


def _noisy_copies(n=600, k=5, h=9, flip=0.3, seed=0):
    """h partitions of n points: the truth with its cluster names permuted and a share ``flip``
    of the points moved to a random cluster, independently per partition."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    L, perms = np.empty((n, h), np.int64), []
    for j in range(h):
        noisy = np.where(rng.random(n) < flip, rng.integers(0, k, n), y)
        p = rng.permutation(k)
        L[:, j], _ = p[noisy], perms.append(p)
    return y, L, np.array(perms)


def test_consensus_recovers_the_truth_better_than_any_partition():
    y, L, _ = _noisy_copies()
    single = max(evaluate(y, L[:, j])["acc"] for j in range(L.shape[1]))
    c = consensus_partition(L, 5, random_state=0)
    assert single < 0.8  # each partition alone: ~76 % of the points in place
    assert evaluate(y, c)["acc"] > 0.97
    np.testing.assert_array_equal(c, consensus_partition(L, 5, random_state=0))


def test_align_recovers_the_permutations():
    y, L, perms = _noisy_copies(flip=0.2)
    P = align_partitions(L, y, 5)
    for j in range(L.shape[1]):  # partition j calls class c "perms[j][c]": map it back to c
        np.testing.assert_array_equal(P[j][perms[j]], np.arange(5))
    assert all(sorted(row) == list(range(5)) for row in P.tolist())


def test_consensus_with_fewer_groups_and_unused_clusters():
    y, L, _ = _noisy_copies(k=3, flip=0.1)
    # the labels live in [0, 6): three of the six cluster ids are never used
    c = consensus_partition(L * 2, 6, n_groups=3, random_state=1)
    assert set(np.unique(c)) == {0, 1, 2}
    assert evaluate(y, c)["acc"] > 0.97
    P = align_partitions(L * 2, c, 6)
    assert P.shape == (L.shape[1], 6)


def test_consensus_errors():
    with pytest.raises(ValueError, match=r"\(N, H\)"):
        consensus_partition(np.zeros(5, int), 2)
    with pytest.raises(ValueError, match="lie in"):
        consensus_partition(np.full((4, 2), 3), 2)
    with pytest.raises(ValueError, match="n_groups"):
        consensus_partition(np.zeros((4, 2), int), 2, n_groups=9)
    with pytest.raises(ValueError, match="reference"):
        align_partitions(np.zeros((4, 2), int), np.zeros(3, int), 2)
