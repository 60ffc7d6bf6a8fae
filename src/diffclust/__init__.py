"""diffclust: clustering unlabeled data with diffusion models.

Estimators follow scikit-learn (``fit`` / ``predict`` / ``predict_proba`` / ``labels_``) and save
to ``config.json`` + ``model.safetensors``.
"""

from .data import load_array, load_dataset
from .errors import DivergenceError
from .generation import ClusterGenerator, load_generator, train_generator
from .methods.base import load_pretrained
from .methods.baselines import GMMClusterer, KMeansClusterer
from .methods.cludi import CLUDI
from .methods.clusterddpm import ClusterDDPM
from .methods.diec import DiEC
from .methods.gcc import GCC
from .methods.self_classifier import SelfClassifier
from .methods.temi import TEMI
from .metrics import evaluate
from .selection import CmaxResult, estimate_cmax, set_default_clusterer

__version__ = "0.1.0"
# C_max's utilization ratio r_C is the paper's, of the one lowest-loss head (C-EDM §3.3)
set_default_clusterer(lambda C, seed: TEMI(C, random_state=seed, readout="best_head",
                                           verbose=False))
__all__ = ["CLUDI", "KMeansClusterer", "GMMClusterer", "load_dataset", "load_array", "evaluate",
           "load_pretrained", "__version__", "TEMI", "estimate_cmax", "CmaxResult", "DiEC",
           "train_generator", "load_generator", "ClusterGenerator", "GCC",
           "ClusterDDPM", "SelfClassifier", "DivergenceError"]
