"""Choosing the number of clusters without labels: the TEMI utilization ratio r_C and the
C_max search (C-EDM §3.3). Does not import ``diffclust.methods``: clusterers come in as
factories."""

from ..metrics import cluster_utilization
from .cmax import CmaxResult, estimate_cmax, set_default_clusterer

__all__ = ["cluster_utilization", "estimate_cmax", "CmaxResult", "set_default_clusterer"]
