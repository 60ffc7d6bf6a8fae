"""Cluster-conditioned generation (C-EDM, METHODS.md §4.4–4.6): an EDM generator conditioned on
cluster ids, the Heun sampler with classifier-free guidance, the Fréchet distance and the
confidence of generated samples."""

from .edm import (
    EDM_DEFAULTS,
    EDMDenoiser,
    edm_loss,
    edm_precond,
    guided_denoiser,
    heun_sample,
    sample_training_sigmas,
)
from .frechet import (
    ClassifierFeatures,
    SmallConvNet,
    confidence_extremes,
    extract_features,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_images,
    gaussian_stats,
    pretrained_extractor,
    sample_confidence,
    train_feature_extractor,
)
from .generator import (
    ClusterGenerator,
    GeneratorResult,
    cluster_frequencies,
    load_cluster_files,
    load_generator,
    sample,
    train_generator,
)

__all__ = [
    "EDM_DEFAULTS",
    "ClassifierFeatures",
    "ClusterGenerator",
    "EDMDenoiser",
    "GeneratorResult",
    "SmallConvNet",
    "cluster_frequencies",
    "confidence_extremes",
    "edm_loss",
    "edm_precond",
    "extract_features",
    "frechet_distance",
    "frechet_distance_features",
    "frechet_distance_images",
    "gaussian_stats",
    "guided_denoiser",
    "heun_sample",
    "load_cluster_files",
    "load_generator",
    "pretrained_extractor",
    "sample",
    "sample_confidence",
    "sample_training_sigmas",
    "train_feature_extractor",
    "train_generator",
]
