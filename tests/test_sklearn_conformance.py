"""scikit-learn's estimator checks on the feature estimators (tiny training budgets). Checks
that cannot pass are declared with their reason; everything else must pass."""

from __future__ import annotations

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from diffclust import CLUDI, TEMI, GMMClusterer, KMeansClusterer, SelfClassifier

ESTIMATORS = [
    KMeansClusterer(3, n_init=2, random_state=0),
    GMMClusterer(3, random_state=0),
    SelfClassifier(3, n_steps=60, hidden_dim=32, batch_size=16, verbose=False, random_state=0),
    TEMI(3, n_steps=60, n_heads=2, batch_size=16, verbose=False, random_state=0),
    CLUDI(3, n_steps=20, n_chains=2, teacher_steps=2, eval_steps=2, eval_chains=2,
          batch_size=16, verbose=False, random_state=0),
]


def _expected_failures(est):
    if isinstance(est, CLUDI):
        return {"check_clustering": (
            "CLUDI clusters unit-normalised feature directions with a batch self-classification "
            "loss; on the check's 50 two-dimensional blobs it collapses to one cluster even at "
            "300 steps (measured ARI 0.0), so the ARI > 0.4 assertion cannot hold")}
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate-result warnings on the checks' toy data
        check(estimator)
