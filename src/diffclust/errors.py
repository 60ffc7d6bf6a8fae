"""The library's own exception types (the lowest layer: imports nothing of diffclust)."""

__all__ = ["DivergenceError"]


class DivergenceError(FloatingPointError, ValueError):
    """Training diverged (a NaN/inf or an exploding loss, or a non-finite fitted quantity); no
    labels or model were produced. The message names the method, the step and what to change."""
