"""vae_ref: the reference VAE and AE in plain PyTorch, the ground truth every backend matches.

The names below are imported from their modules on first use (PEP 562's module __getattr__),
so that what needs only the configuration (``vae-bench --help``, a Ctrl-C in the first
second) does not wait two seconds for PyTorch.
"""

import importlib

# Each public name and the module of this package that defines it.
_DEFINED_IN = {
    "VAEConfig": "config",
    "EvalResult": "evaluate",
    "evaluate_elbo": "evaluate",
    "importance_weighted_log_likelihood": "evaluate",
    "latent_usage": "evaluate",
    "LatentUsage": "evaluate",
    "LossTerms": "losses",
    "bce_with_logits": "losses",
    "gaussian_kl": "losses",
    "loss_terms": "losses",
    "AE": "model",
    "VAE": "model",
    "ForwardPass": "model",
    "build_model": "model",
    "Params": "params",
    "export_params": "params",
    "import_params": "params",
    "parameter_shapes": "params",
    "EpochRecord": "training_outcome",
    "NonFiniteLossError": "training_outcome",
    "TrainResult": "training_outcome",
    "TrainingDiverged": "training_outcome",
}

__all__ = sorted(_DEFINED_IN)


def __getattr__(name: str):
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_DEFINED_IN[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return __all__
