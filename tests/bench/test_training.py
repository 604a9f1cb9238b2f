"""The one training loop (bench.training), training the reference through its backend: it
learns, it is reproducible, it trains on every image, it stops loudly on NaN."""

import numpy as np
import pytest

from bench.training import train_backend
from kernels import create_backend
from vae_ref import NonFiniteLossError, VAEConfig, build_model, evaluate_elbo, export_params


def train(config, x, t, backend="torch"):
    return train_backend(create_backend(backend), config, x, t, progress=False)


def test_short_training_improves_the_test_elbo(mnist5k):
    config = VAEConfig(latent_dim=10, epochs=2, seed=0)
    before = evaluate_elbo(build_model(config).eval(), mnist5k.test_x, seed=0).elbo
    result = train(config, mnist5k.train_x, mnist5k.test_x)
    after = [r.test_elbo for r in result.history]
    # An untrained decoder scores ~ -543 nats; two epochs on 4,000 digits reach ~ -200.
    assert after[0] > before + 100
    assert after[1] > after[0]
    assert result.final.train_kl > 0 and result.final.test_kl > 0
    assert result.average_train_elbo == pytest.approx(
        np.mean([r.train_elbo for r in result.history])
    )


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_same_seed_same_numbers(mnist5k, model):
    config = VAEConfig(latent_dim=4, epochs=1, seed=7, model=model, binarize=model == "vae")
    x, t = mnist5k.train_x[:1000], mnist5k.test_x[:200]
    a = train(config, x, t)
    b = train(config, x, t)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in a.history] == [strip(r) for r in b.history]
    pa, pb = export_params(a.model), export_params(b.model)
    assert all(np.array_equal(pa[n], pb[n]) for n in pa)
    c = train(config.replace(seed=8), x, t)
    assert strip(c.history[0]) != strip(a.history[0])


class Recording:
    """A backend that notes every batch it is given and the loss it returned."""

    def __init__(self, inner):
        self.inner, self.batches, self.losses = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_step(self, data, indices, eps=None, *, want_loss=True):
        self.batches.append(np.array(indices))
        loss = self.inner.train_step(data, indices, eps, want_loss=want_loss)
        self.losses.append(loss)
        return loss


def test_every_image_is_trained_on_once_per_epoch_the_last_batch_short():
    rng = np.random.default_rng(0)
    x = rng.random((130, 784), dtype=np.float32)  # one batch of 128 and one of 2
    backend = Recording(create_backend("torch"))
    result = train_backend(backend, VAEConfig(latent_dim=2, epochs=2), x, x[:10], progress=False)
    assert [len(b) for b in backend.batches] == [128, 2, 128, 2]
    for epoch in (0, 1):
        seen = np.concatenate(backend.batches[2 * epoch : 2 * epoch + 2])
        assert sorted(seen) == list(range(130))
    # The epoch's train ELBO weighs each batch by its images, the short one included.
    first, short = backend.losses[2], backend.losses[3]
    expected = 128 * (first.reconstruction + first.kl) + 2 * (short.reconstruction + short.kl)
    assert result.final.train_elbo == pytest.approx(-expected / 130, rel=1e-6)


def test_nan_in_the_data_stops_training_and_says_where():
    rng = np.random.default_rng(0)
    x = rng.random((600, 784), dtype=np.float32)
    x[417, 5] = np.nan
    config = VAEConfig(latent_dim=2, epochs=2, batch_size=100, seed=4)
    # The loop shuffles with this generator: find the step that meets image 417.
    order = np.random.default_rng([config.seed, 1]).permutation(len(x))
    step = int(np.flatnonzero(order == 417)[0]) // config.batch_size
    with pytest.raises(NonFiniteLossError, match=f"epoch 1, step {step} ") as info:
        train(config, x, x[:10])
    assert (info.value.epoch, info.value.step) == (1, step)
    assert "learning rate" in str(info.value)


def test_wrong_shaped_data_is_refused():
    with pytest.raises(ValueError, match=r"train_x must be a non-empty \(N, 784\) array"):
        train(
            VAEConfig(epochs=1), np.zeros((10, 28, 28), np.float32), np.zeros((2, 784), np.float32)
        )


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_divergence_on_an_epochs_last_step_stops_training(mnist5k, backend):
    # One step per epoch, and a step so large that the weights leave the float range: no
    # later step's loss is there to notice, so the check after the epoch must.
    x, t = mnist5k.train_x[:500], mnist5k.test_x[:100]
    config = VAEConfig(latent_dim=2, epochs=2, batch_size=500, lr=1e30)
    # FloatingPointError: what vae_ref.TrainingDiverged, the CLI's "training failed", is.
    with pytest.raises(FloatingPointError, match="non-finite at epoch 1, step 0 .*not saved"):
        train(config, x, t, backend)
