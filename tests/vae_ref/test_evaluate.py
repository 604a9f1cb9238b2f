"""The test-set ELBO and the importance-weighted bound on log p(x)."""

import math

import numpy as np
import pytest
import torch

from vae_ref import VAEConfig, bce_with_logits, build_model, evaluate_elbo
from vae_ref import importance_weighted_log_likelihood as iwae


@pytest.fixture(scope="module")
def tiny_vae():
    """A 1-D latent VAE small enough that log p(x) can be computed by quadrature."""
    config = VAEConfig(input_dim=6, hidden_dim=8, latent_dim=1, seed=11)
    model = build_model(config, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(16, 6, generator=g, dtype=torch.float64) > 0.5).double().numpy()
    return model, x


def exact_log_likelihood(model, x: np.ndarray) -> np.ndarray:
    """log p(x) = log ∫ p(x|z) N(z; 0, 1) dz by the trapezoid rule on a fine grid."""
    z = torch.linspace(-12, 12, 48_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        logits = model.decode(z)
        out = []
        for row in torch.from_numpy(x):
            log_joint = -bce_with_logits(logits, row.expand_as(logits)) - 0.5 * (
                z[:, 0] ** 2 + math.log(2 * math.pi)
            )
            dz = (z[1, 0] - z[0, 0]).item()
            out.append(torch.logsumexp(log_joint, 0).item() + math.log(dz))
    return np.array(out)


def test_iwae_converges_to_the_exact_log_likelihood_from_below(tiny_vae):
    model, x = tiny_vae
    exact = exact_log_likelihood(model, x)
    elbo = evaluate_elbo(model, x, seed=0).elbo
    bound = iwae(model, x, k=5000, seed=0, per_image=True)
    assert elbo < exact.mean() - 0.05  # the ELBO is a strictly looser bound here
    # With k = 5000 the remaining gap is tiny; it cannot be positive beyond Monte Carlo noise.
    gap = exact - bound
    assert np.all(gap > -0.01) and gap.mean() < 0.02, gap


def test_iwae_increases_with_k_and_bounds_the_elbo(mnist5k):
    config = VAEConfig(latent_dim=10, seed=0)
    model = build_model(config).eval()
    x = mnist5k.test_x[:200]
    elbo = evaluate_elbo(model, x, seed=0).elbo
    k1 = iwae(model, x, k=1, seed=1)
    k10 = iwae(model, x, k=10, seed=1)
    k100 = iwae(model, x, k=100, seed=1)
    assert k1 == pytest.approx(elbo, abs=0.5)  # k = 1 is the ELBO (different noise)
    assert elbo <= k10 < k100


def test_iwae_is_bounded_in_memory_and_chunking_does_not_bias_it(tiny_vae):
    model, x = tiny_vae
    wide = iwae(model, x, k=2000, seed=0)
    narrow = iwae(model, x, k=2000, seed=0, max_elements=64)  # a few samples per chunk
    assert narrow == pytest.approx(wide, abs=0.02)


def test_iwae_refuses_an_autoencoder_and_bad_k():
    ae = build_model(VAEConfig(latent_dim=3, model="ae"))
    x = np.zeros((2, 784), np.float32)
    with pytest.raises(ValueError, match="needs a VAE"):
        iwae(ae, x, k=10)
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        iwae(build_model(VAEConfig(latent_dim=3)), x, k=0)


def test_evaluate_elbo_is_reproducible_and_batch_independent_in_expectation(mnist5k):
    model = build_model(VAEConfig(latent_dim=4)).eval()
    x = mnist5k.test_x[:300]
    a = evaluate_elbo(model, x, seed=3)
    assert a == evaluate_elbo(model, x, seed=3)
    b = evaluate_elbo(model, x, seed=3, batch_size=7)
    assert b.reconstruction == pytest.approx(a.reconstruction, rel=1e-2)
    assert a.elbo == pytest.approx(-(a.reconstruction + a.kl))
