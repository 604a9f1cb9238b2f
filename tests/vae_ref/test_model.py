"""Config validation, the models' structure, seeding, and the canonical parameters."""

import numpy as np
import pytest
import torch

from vae_ref import (
    VAEConfig,
    build_model,
    export_params,
    import_params,
    parameter_shapes,
)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"model": "gan"}, "model must be 'vae' or 'ae'"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"beta": -1.0}, "beta must be >= 0"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**changes)


def test_config_names_and_defaults_are_the_reports():
    c = VAEConfig()
    assert (c.input_dim, c.hidden_dim, c.batch_size, c.lr, c.epochs, c.beta) == (
        784,
        512,
        128,
        3e-4,
        50,
        1.0,
    )
    assert c.name == "vae-z20"
    assert c.replace(beta=4).name == "vae-z20-beta4"
    assert c.replace(model="ae", latent_dim=2).name == "ae-z2"


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_canonical_names_and_shapes(model):
    config = VAEConfig(latent_dim=7, model=model)
    params = export_params(build_model(config))
    shapes = parameter_shapes(config)
    assert list(params) == list(shapes)
    for name, array in params.items():
        assert array.shape == shapes[name]
        assert array.dtype == np.float32 and array.flags.c_contiguous


def test_import_names_every_mismatch():
    vae_params = export_params(build_model(VAEConfig(latent_dim=5)))
    with pytest.raises(ValueError) as info:
        import_params(build_model(VAEConfig(latent_dim=5, model="ae")), vae_params)
    message = str(info.value)
    assert "missing: enc.code.weight, enc.code.bias" in message
    assert "unexpected: enc.mu.weight" in message
    with pytest.raises(
        ValueError, match=r"dec.fc1.weight has shape \(512, 5\), expected \(512, 6\)"
    ):
        import_params(build_model(VAEConfig(latent_dim=6)), vae_params)


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(99)
    expected_next = torch.rand(1)
    torch.manual_seed(99)
    a = export_params(build_model(VAEConfig(seed=5)))
    assert torch.equal(torch.rand(1), expected_next)
    b = export_params(build_model(VAEConfig(seed=5)))
    c = export_params(build_model(VAEConfig(seed=6)))
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["enc.fc1.weight"], c["enc.fc1.weight"])


def test_reparameterization_uses_the_given_noise():
    config = VAEConfig(input_dim=9, hidden_dim=8, latent_dim=3)
    net = build_model(config, dtype=torch.float64)
    x = torch.rand(5, 9, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    out = net(x, eps)
    torch.testing.assert_close(out.z, out.mu + torch.exp(0.5 * out.logvar) * eps)
    torch.testing.assert_close(out.logits, net.decode(out.z))
    assert out.h.shape == (5, 8) and out.dec_h.shape == (5, 8) and out.logits.shape == (5, 9)
    assert (out.h >= 0).all() and (out.dec_h >= 0).all()


def test_autoencoder_code_is_deterministic():
    net = build_model(VAEConfig(input_dim=9, hidden_dim=8, latent_dim=3, model="ae"))
    x = torch.rand(5, 9)
    a, b = net(x), net(x, torch.randn(5, 3))
    assert a.logvar is None
    assert torch.equal(a.z, b.z) and torch.equal(a.z, a.mu)
