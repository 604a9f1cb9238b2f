"""The reference models: an MLP VAE and the vanilla autoencoder of the same shape.

784 -> 512 (ReLU) -> code -> 512 (ReLU) -> 784 logits. Images are sigmoid(logits).
Submodule names are chosen so that ``state_dict()`` keys are the canonical parameter
names every backend uses (``enc.fc1.weight``, ``dec.out.bias``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .config import VAEConfig


@dataclass
class ForwardPass:
    """Every intermediate of one forward pass (the agreement gate compares each)."""

    h: Tensor  # encoder hidden activation, ReLU(x W1^T + b1)            (B, hidden)
    mu: Tensor  # posterior mean; for the AE, the deterministic code     (B, latent)
    logvar: Tensor | None  # posterior log sigma^2; None for the AE      (B, latent)
    z: Tensor  # the code fed to the decoder: mu + exp(logvar / 2) * eps  (B, latent)
    dec_h: Tensor  # decoder hidden activation                             (B, hidden)
    logits: Tensor  # Bernoulli logits of the 784 pixels                    (B, input)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x))))."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.input_dim, config.hidden_dim)
        self.mu = nn.Linear(config.hidden_dim, config.latent_dim)
        self.logvar = nn.Linear(config.hidden_dim, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = torch.relu(self.fc1(x))
        return h, self.mu(h), self.logvar(h)


class DeterministicEncoder(nn.Module):
    """The autoencoder's encoder: one code per image."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.input_dim, config.hidden_dim)
        self.code = nn.Linear(config.hidden_dim, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.fc1(x))
        return h, self.code(h)


class Decoder(nn.Module):
    """p(x|z): independent Bernoulli pixels with logits from an MLP."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.latent_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.input_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        dec_h = torch.relu(self.fc1(z))
        return dec_h, self.out(dec_h)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.enc = GaussianEncoder(config)
        self.dec = Decoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's (mu, logvar)."""
        _, mu, logvar = self.enc(x)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits for codes z."""
        return self.dec(z)[1]

    def forward(self, x: Tensor, eps: Tensor | None = None, generator=None) -> ForwardPass:
        """One pass with the reparameterization z = mu + sigma * eps.

        ``eps`` may be given (the agreement gate feeds the same noise to every backend);
        otherwise it is drawn from ``generator`` (or the global RNG).
        """
        h, mu, logvar = self.enc(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        dec_h, logits = self.dec(z)
        return ForwardPass(h=h, mu=mu, logvar=logvar, z=z, dec_h=dec_h, logits=logits)


class AE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.enc = DeterministicEncoder(config)
        self.dec = Decoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, None]:
        """The code, and no variance (same shape of answer as ``VAE.encode``)."""
        return self.enc(x)[1], None

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)[1]

    def forward(self, x: Tensor, eps: Tensor | None = None, generator=None) -> ForwardPass:
        """``eps`` and ``generator`` are accepted and ignored: the code is deterministic."""
        h, code = self.enc(x)
        dec_h, logits = self.dec(code)
        return ForwardPass(h=h, mu=code, logvar=None, z=code, dec_h=dec_h, logits=logits)


def build_model(config: VAEConfig, dtype: torch.dtype = torch.float32) -> VAE | AE:
    """A freshly initialised model, reproducible from ``config.seed`` alone.

    PyTorch's default ``nn.Linear`` init draws from the global RNG; we fork it so building a
    model neither depends on nor disturbs the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = VAE(config) if config.model == "vae" else AE(config)
    return model.to(dtype)


# -- inference on images, NumPy in and out (an experiment's figures) --------------------------


def reconstruct(model: VAE | AE, x: np.ndarray) -> np.ndarray:
    """Deterministic reconstructions: the decoding of the posterior mean (the AE's code)."""
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(x))
        return torch.sigmoid(model.decode(mu)).numpy()


def decode_images(model: VAE | AE, z: np.ndarray) -> np.ndarray:
    """The images (pixel means) that codes ``z`` decode to."""
    with torch.no_grad():
        return torch.sigmoid(model.decode(torch.from_numpy(z.astype(np.float32)))).numpy()


def posterior_means(model: VAE | AE, x: np.ndarray) -> np.ndarray:
    """The posterior mean of each image's code (the AE's code)."""
    with torch.no_grad():
        return model.encode(torch.from_numpy(x))[0].numpy()
