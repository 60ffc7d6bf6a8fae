"""The shared diffusion core: schedules, forward process, conversions, weightings, samplers and
vector denoisers. Image U-Nets live in :mod:`diffclust.diffusion.unet` (diffusers wrappers)."""

from .mlp import MPSiLU, VectorDenoiser, timestep_embedding
from .process import (
                      PREDICTIONS,
                      denoiser_target,
                      eps_from_prediction,
                      predict_eps_from_x0,
                      predict_x0_from_eps,
                      predict_x0_from_v,
                      q_posterior,
                      q_sample,
                      v_target,
)
from .samplers import ddim_sample, ddim_step, ddim_time_pairs, ddpm_sample, edm_heun_sample
from .schedules import (
                      NoiseSchedule,
                      betas_for_alpha_bar,
                      cosine_betas,
                      edm_sigmas,
                      linear_betas,
                      make_betas,
                      rescale_alpha_bar,
                      sigmoid_betas,
                      sqrt_betas,
)
from .weighting import edm_weight, min_snr_weight

__all__ = [
    "NoiseSchedule", "betas_for_alpha_bar", "cosine_betas", "edm_sigmas", "linear_betas",
    "make_betas", "rescale_alpha_bar", "sigmoid_betas", "sqrt_betas", "q_sample",
    "predict_eps_from_x0", "predict_x0_from_eps", "predict_x0_from_v", "q_posterior", "v_target",
    "PREDICTIONS", "denoiser_target", "eps_from_prediction",
    "ddim_sample", "ddim_step", "ddim_time_pairs", "ddpm_sample", "edm_heun_sample",
    "min_snr_weight", "edm_weight", "MPSiLU", "VectorDenoiser", "timestep_embedding",
]
