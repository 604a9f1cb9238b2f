"""The loss formulas: BCE-with-logits against the naive form, KL against Monte Carlo,
and the whole objective's gradient against finite differences (float64 gradcheck)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from vae_ref import VAEConfig, bce_with_logits, build_model, gaussian_kl, loss_terms


def naive_bce(logits, x):
    s = torch.sigmoid(logits)
    return -(x * torch.log(s) + (1 - x) * torch.log(1 - s)).sum(dim=1)


def test_bce_matches_naive_formula_where_both_are_finite():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 784, generator=g, dtype=torch.float64) * 4
    x = torch.rand(64, 784, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        bce_with_logits(logits, x), naive_bce(logits, x), rtol=1e-12, atol=1e-9
    )
    torch.testing.assert_close(
        bce_with_logits(logits, x),
        F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1),
    )


def test_bce_stays_finite_where_naive_overflows():
    logits = torch.tensor([[200.0, -200.0, 90.0, -90.0]], dtype=torch.float32)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert not torch.isfinite(naive_bce(logits, x)).all()
    ours = bce_with_logits(logits, x)
    assert torch.isfinite(ours).all()
    # Two confident mistakes cost |l| each; two confident hits cost ~exp(-90) ~ 0.
    assert ours.item() == pytest.approx(400.0, rel=1e-6)


def test_kl_matches_monte_carlo_estimate():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.7
    n = 400_000
    eps = torch.randn(n, 4, 6, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = -0.5 * (eps**2 + logvar + math.log(2 * math.pi)).sum(-1)
    log_p = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
    samples = log_q - log_p
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    analytic = gaussian_kl(mu, logvar)
    assert torch.all((estimate - analytic).abs() < 5 * stderr), (estimate, analytic, stderr)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 5)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(3))
    assert (gaussian_kl(zeros + 0.1, zeros - 0.2) > 0).all()


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_gradcheck_of_the_objective_in_float64(model):
    config = VAEConfig(input_dim=7, hidden_dim=5, latent_dim=3, model=model, beta=0.7, seed=3)
    net = build_model(config, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 7, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())

    def objective(*flat):
        out = functional_call(net, dict(zip(names, flat)), (x, eps))
        return loss_terms(out, x, config).loss

    assert torch.autograd.gradcheck(objective, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_beta_weights_only_the_kl():
    config = VAEConfig(input_dim=7, hidden_dim=5, latent_dim=3, seed=0)
    net = build_model(config, dtype=torch.float64)
    x = torch.rand(6, 7, dtype=torch.float64)
    eps = torch.randn(6, 3, dtype=torch.float64)
    out = net(x, eps)
    t1 = loss_terms(out, x, config)
    t4 = loss_terms(out, x, config.replace(beta=4.0))
    torch.testing.assert_close(t4.loss - t1.loss, 3 * t1.kl.mean())
    torch.testing.assert_close(t4.elbo, t1.elbo)  # the ELBO is reported at beta = 1


def test_bce_gradient_is_sigmoid_minus_x_at_exactly_zero_logits():
    """At l == 0 the derivative is 1/2 - x. Autograd of the expression takes subgradients
    there (clamp passes 1, abs 0) and gives 1 - x: a float32 logit is exactly 0 now and then,
    and that 0.5 / batch in one pixel's gradient sent a gated trajectory 1 lr astray."""
    logits = torch.tensor(
        [[0.0, -0.0, 0.0, 1e-30, -1e-30, 3.0]], dtype=torch.float64, requires_grad=True
    )
    x = torch.tensor([[0.0, 0.25, 1.0, 0.25, 0.25, 0.5]], dtype=torch.float64)
    bce_with_logits(logits, x).sum().backward()
    torch.testing.assert_close(logits.grad, torch.sigmoid(logits.detach()) - x, rtol=1e-15, atol=0)
    # The check can fail: the expression's own autograd is wrong at the zeros.
    plain = logits.detach().clone().requires_grad_()
    per_pixel = plain.clamp(min=0) - plain * x + torch.log1p(torch.exp(-plain.abs()))
    per_pixel.sum().backward()
    at_zero = plain.detach() == 0
    assert not torch.allclose(plain.grad[at_zero], (0.5 - x)[at_zero])


def test_bce_gradient_with_respect_to_the_targets_is_minus_the_logits():
    logits = torch.randn(3, 7, dtype=torch.float64)
    x = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(3, dtype=torch.float64)
    (bce_with_logits(logits, x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, -logits * weights[:, None])
