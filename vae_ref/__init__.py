"""vae_ref: the reference VAE and AE in plain PyTorch, the ground truth every backend matches."""

from .config import VAEConfig
from .evaluate import EvalResult, evaluate_elbo, importance_weighted_log_likelihood
from .losses import LossTerms, bce_with_logits, gaussian_kl, loss_terms
from .model import AE, VAE, ForwardPass, build_model
from .params import Params, export_params, import_params, parameter_shapes
from .training_outcome import EpochRecord, NonFiniteLossError, TrainingDiverged, TrainResult

__all__ = [
    "AE",
    "VAE",
    "EpochRecord",
    "EvalResult",
    "ForwardPass",
    "LossTerms",
    "NonFiniteLossError",
    "Params",
    "TrainResult",
    "TrainingDiverged",
    "VAEConfig",
    "bce_with_logits",
    "build_model",
    "evaluate_elbo",
    "export_params",
    "gaussian_kl",
    "import_params",
    "importance_weighted_log_likelihood",
    "loss_terms",
    "parameter_shapes",
]
