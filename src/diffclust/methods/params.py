"""Hyperparameter constraints, declared once per estimator (``_parameter_constraints``, in
scikit-learn's vocabulary) and checked in the shared ``fit``: a bad value fails before any work
with an ``InvalidParameterError`` (a ``ValueError``) that names the parameter, the allowed
values and the value given."""

from __future__ import annotations

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["COMMON", "Interval", "StrOptions", "Integral", "Real", "int_at_least", "positive",
           "non_negative", "unit", "unit_open", "fraction", "AUTO", "pair", "flag"]

AUTO = StrOptions({"auto"})


class _Int(Interval):
    """An integer interval that refuses booleans (``True`` is an ``Integral`` in Python)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, bool) and super().is_satisfied_by(val)


def int_at_least(k: int):
    return _Int(Integral, k, None, closed="left")


positive = Interval(Real, 0, None, closed="neither")
non_negative = Interval(Real, 0, None, closed="left")
unit = Interval(Real, 0, 1, closed="both")            # [0, 1]
unit_open = Interval(Real, 0, 1, closed="right")      # (0, 1]
fraction = Interval(Real, 0, 1, closed="left")        # [0, 1)
pair = [tuple, list]                                  # (low, high); ranges checked by the method
flag = ["boolean"]

#: parameters every estimator has
COMMON = {
    "n_clusters": [int_at_least(1)],
    "random_state": ["random_state"],
    "device": [None, str, torch.device],
    "precision": [StrOptions({"auto", "bf16", "fp16", "fp32", "bfloat16", "float16",
                              "float32"})],
    "verbose": ["verbose"],
}
