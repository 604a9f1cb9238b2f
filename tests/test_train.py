"""The reference training loop: it learns, it is reproducible, it stops loudly on NaN."""

import numpy as np
import pytest

from vae_ref import NonFiniteLossError, VAEConfig, build_model, evaluate_elbo, export_params, train


def test_short_training_improves_the_test_elbo(mnist5k):
    config = VAEConfig(latent_dim=10, epochs=2, seed=0)
    before = evaluate_elbo(build_model(config).eval(), mnist5k.test_x, seed=0).elbo
    result = train(config, mnist5k.train_x, mnist5k.test_x, progress=False)
    after = [r.test_elbo for r in result.history]
    # An untrained decoder scores ~ -543 nats; two epochs on 4,000 digits reach ~ -200.
    assert after[0] > before + 100
    assert after[1] > after[0]
    assert result.final.train_kl > 0 and result.final.test_kl > 0
    assert result.average_train_elbo == pytest.approx(np.mean([r.train_elbo for r in result.history]))


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_same_seed_same_numbers(mnist5k, model):
    config = VAEConfig(latent_dim=4, epochs=1, seed=7, model=model, binarize=model == "vae")
    x, t = mnist5k.train_x[:1000], mnist5k.test_x[:200]
    a = train(config, x, t, progress=False)
    b = train(config, x, t, progress=False)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in a.history] == [strip(r) for r in b.history]
    pa, pb = export_params(a.model), export_params(b.model)
    assert all(np.array_equal(pa[n], pb[n]) for n in pa)
    c = train(config.replace(seed=8), x, t, progress=False)
    assert strip(c.history[0]) != strip(a.history[0])


def test_partial_last_batch_is_trained_on():
    rng = np.random.default_rng(0)
    x = rng.random((130, 784), dtype=np.float32)  # one batch of 128 and one of 2
    result = train(VAEConfig(latent_dim=2, epochs=1), x, x[:10], progress=False)
    assert np.isfinite(result.final.train_elbo)


def test_nan_in_the_data_stops_training_and_says_where():
    rng = np.random.default_rng(0)
    x = rng.random((600, 784), dtype=np.float32)
    x[417, 5] = np.nan
    config = VAEConfig(latent_dim=2, epochs=2, batch_size=100, seed=4)
    # The loop shuffles with this generator: find the step that meets image 417.
    order = np.random.default_rng([config.seed, 1]).permutation(len(x))
    step = int(np.flatnonzero(order == 417)[0]) // config.batch_size
    with pytest.raises(NonFiniteLossError, match=f"epoch 1, step {step} ") as info:
        train(config, x, x[:10], progress=False)
    assert (info.value.epoch, info.value.step) == (1, step)
    assert "learning rate" in str(info.value)


def test_wrong_shaped_data_is_refused():
    with pytest.raises(ValueError, match=r"train_x must be a non-empty \(N, 784\) array"):
        train(VAEConfig(epochs=1), np.zeros((10, 28, 28), np.float32),
              np.zeros((2, 784), np.float32), progress=False)


@pytest.mark.parametrize("loop", ["reference", "backend"])
def test_divergence_on_an_epochs_last_step_stops_training(mnist5k, loop):
    # One step per epoch, and a step so large that the weights leave the float range: no
    # later step's loss is there to notice, so the check after the epoch must.
    from bench.training import train_backend
    from kernels import create_backend

    x, t = mnist5k.train_x[:500], mnist5k.test_x[:100]
    config = VAEConfig(latent_dim=2, epochs=2, batch_size=500, lr=1e30)
    # FloatingPointError: what vae_ref.TrainingDiverged, the CLI's "training failed", is.
    with pytest.raises(FloatingPointError, match="non-finite at epoch 1, step 0 .*not saved"):
        if loop == "reference":
            train(config, x, t, progress=False)
        else:
            train_backend(create_backend("torch"), config, x, t, progress=False)
