"""Active units (Burda, Grosse & Salakhutdinov 2016: unit u is active when the variance over
the data of its posterior mean exceeds 0.01) and the KL of each latent dimension, on encoders
whose answer is known, and on a real VAE, where the dimensions' KL sum to the ELBO's KL term."""

import numpy as np
import pytest
import torch

from vae_ref import VAE, VAEConfig, evaluate_elbo, latent_usage
from vae_ref.evaluate import ACTIVITY_THRESHOLD


class Encoder:
    """An encoder whose posterior means are given per image: what latent_usage reads."""

    def __init__(self, mu: np.ndarray, logvar: np.ndarray | None = None):
        self.mu = torch.from_numpy(mu)
        self.logvar = torch.zeros_like(self.mu) if logvar is None else torch.from_numpy(logvar)

    def parameters(self):
        yield torch.zeros(1, dtype=torch.float64)

    def encode(self, xb):
        rows = xb[:, 0].long()  # each image carries its index
        return self.mu[rows], self.logvar[rows]


def images(n: int) -> np.ndarray:
    x = np.zeros((n, 784))
    x[:, 0] = np.arange(n)
    return x


def standardized(rng, n: int) -> np.ndarray:
    """n values of variance exactly 1 over the set (the population variance)."""
    v = rng.standard_normal(n)
    return (v - v.mean()) / v.std()


@pytest.mark.parametrize("k", [0, 3, 8])
def test_the_active_units_are_the_dimensions_that_carry_the_data(k):
    rng = np.random.default_rng(k)
    n, z = 500, 8
    mu = np.full((n, z), 0.7)  # a constant mean: the prior's business, not the data's
    for u in range(k):
        mu[:, u] = standardized(rng, n) * (u + 1)
    usage = latent_usage(Encoder(mu), images(n), batch_size=64)
    assert usage.active_units == k
    assert usage.activity[:k] == pytest.approx((np.arange(k) + 1.0) ** 2)
    assert usage.activity[k:] == pytest.approx(0.0, abs=1e-12)


def test_a_unit_just_under_the_threshold_is_inactive_and_just_over_active():
    rng = np.random.default_rng(0)
    n = 1000
    spread = standardized(rng, n)
    mu = np.stack([spread * np.sqrt(0.0099), spread * np.sqrt(0.0101)], axis=1)
    usage = latent_usage(Encoder(mu), images(n))
    assert usage.activity == pytest.approx([0.0099, 0.0101])
    assert ACTIVITY_THRESHOLD == 0.01 and usage.active_units == 1


def test_each_dimensions_kl_is_its_closed_form():
    """mu = 1, logvar = log 2: KL = (1 + 2 - 1 - log 2) / 2 in every image."""
    n = 10
    usage = latent_usage(Encoder(np.ones((n, 2)), np.full((n, 2), np.log(2.0))), images(n))
    assert usage.kl_per_dim == pytest.approx([(2 - np.log(2.0)) / 2] * 2)


def test_the_dimensions_kl_sum_to_the_elbos_kl_term(mnist5k):
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=5, hidden_dim=32)).double().eval()
    x = mnist5k.test_x[:300].astype(np.float64)
    usage = latent_usage(model, x, batch_size=128)
    assert usage.kl_per_dim.shape == (5,)
    assert usage.kl_per_dim.sum() == pytest.approx(evaluate_elbo(model, x).kl, rel=1e-12)
