"""The experiment's hyper-parameters, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["vae", "ae"]
# The report's sweep of latent sizes: every command's default.
DEFAULT_LATENTS = (2, 10, 20, 50)
# Adam's constants besides the learning rate: torch.optim.Adam's defaults, as the report
# trained. The reference passes them to its optimizer, and every backend reads them here.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Adam steps of the gate's K-step case, wherever the gate runs unless told otherwise (check,
# run, profile, the fixture): long enough that an optimizer's mistake (a constant, the bias
# correction, the learning rate) shows in every parameter, short enough to take seconds.
GATE_ADAM_STEPS = 50
# The report's hidden width (784 -> 512 -> z -> 512 -> 784): every command's default.
DEFAULT_HIDDEN = 512


# The kinds of case the agreement gate checks, as the oracle builds them (vae_ref.oracle) and a
# fixture stores them: here, where the command line reads them without loading PyTorch.
CASE_KINDS = ("batch", "partial-batch", "extreme-logits", "beta4", "adam-steps")


@dataclass(frozen=True)
class VAEConfig:
    """Everything that defines one training run of the reference model.

    Defaults are the report's setting (Kingma & Welling's MLP VAE on MNIST).
    """

    input_dim: int = 784  # pixels per image: 28 x 28, flattened
    hidden_dim: int = DEFAULT_HIDDEN  # width of the single hidden layer in encoder and decoder
    latent_dim: int = 20  # z: size of the code (the experiment sweeps 2, 10, 20, 50, ...)
    model: ModelKind = "vae"  # "vae": Gaussian q(z|x) + KL; "ae": deterministic code, no KL
    beta: float = 1.0  # weight on the KL term (beta-VAE); 1 gives the ELBO proper
    batch_size: int = 128  # images per Adam step
    lr: float = 3e-4  # Adam learning rate (its betas and eps: ADAM_BETAS, ADAM_EPS)
    epochs: int = 50  # passes over the training set
    seed: int = 0  # seeds weight init, shuffling and the reparameterization noise
    binarize: bool = False  # dynamic binarization: each pixel ~ Bernoulli(intensity) per step

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden_dim", "latent_dim", "batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive integer, got {value!r}")
        if self.model not in ("vae", "ae"):
            raise ValueError(f"VAEConfig.model must be 'vae' or 'ae', got {self.model!r}")
        if not (self.lr > 0):
            raise ValueError(f"VAEConfig.lr must be > 0, got {self.lr!r}")
        if not (self.beta >= 0):
            raise ValueError(f"VAEConfig.beta must be >= 0, got {self.beta!r}")

    @property
    def name(self) -> str:
        """Short stable name of the model, used for files and table rows: 'vae-z20', 'ae-z20'."""
        suffix = "" if self.model == "ae" or self.beta == 1.0 else f"-beta{self.beta:g}"
        return f"{self.model}-z{self.latent_dim}{suffix}"

    def replace(self, **changes) -> VAEConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
