"""The agreement gate: does a backend compute what the reference computes?

For each latent size it builds cases on real data (the same parameters, batch and noise for
every party), runs the reference in float64 (the oracle: each tensor's truth) and in float32
(the calibration: how far float32 PyTorch itself lands from the truth), runs the backend, and
compares every intermediate, loss term and gradient, then the losses and parameters over K
Adam steps fed the same batches and noise. Tolerances: ``bench.tolerances``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kernels.base import Backend
from kernels.torch_ref import TorchBackend
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.atomic import atomic_open
from vae_ref.params import Params

from .comparison import Comparison, compare, max_error

SCHEMA_VERSION = 1
DEFAULT_LATENTS = (2, 10, 20, 50)
EXTREME_LOGIT = 100.0  # |logits| this large overflow a naive sigmoid/BCE in float32


class FixtureError(ValueError):
    """A fixture file that cannot be used (missing, other schema, malformed)."""


@dataclass(frozen=True)
class Case:
    """One set of inputs every party receives identically."""

    name: str  # "z20/batch", ...
    config: VAEConfig
    params: Params
    x: np.ndarray  # (B, 784) float32: the batch of a single forward/backward
    eps: np.ndarray  # (B, Z) float32
    # K Adam steps (steps > 0): batch k is data[step_indices[k]] with noise step_eps[k].
    steps: int = 0
    data: np.ndarray | None = None
    step_indices: np.ndarray | None = None
    step_eps: np.ndarray | None = None


def build_cases(train_x: np.ndarray, latent: int, *, seed: int = 0, steps: int = 50,
                batch: int = 128, beta: float = 4.0) -> list[Case]:
    """The gate's cases for one latent size, on real images ``train_x``:

    batch           a real batch whose first two images are all-zero and all-one pixels
    partial-batch   an odd-sized final batch (37 images)
    extreme-logits  output biases of +-100, so the logits overflow a naive BCE
    beta            the same batch with a KL weight of ``beta`` (beta-VAE)
    adam-steps      ``steps`` Adam steps over shuffled batches (if steps > 0)
    """
    if len(train_x) < batch + 37:
        raise ValueError(f"the gate needs at least {batch + 37} images, got {len(train_x)}")
    rng = np.random.default_rng([seed, latent])
    config = VAEConfig(latent_dim=latent, seed=seed, batch_size=batch)
    params = export_params(build_model(config))
    x = np.ascontiguousarray(train_x[:batch], dtype=np.float32).copy()
    x[0], x[1] = 0.0, 1.0

    def noise(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    extreme = dict(params)
    signs = np.where(np.arange(config.input_dim) % 2 == 0, 1.0, -1.0).astype(np.float32)
    extreme["dec.out.bias"] = (params["dec.out.bias"] + EXTREME_LOGIT * signs).astype(np.float32)
    eps = noise(batch, latent)
    prefix = f"z{latent}/"
    cases = [
        Case(prefix + "batch", config, params, x, eps),
        Case(prefix + "partial-batch", config, params,
             np.ascontiguousarray(train_x[batch : batch + 37], dtype=np.float32), noise(37, latent)),
        Case(prefix + "extreme-logits", config, extreme, x, eps),
        Case(prefix + f"beta{beta:g}", replace(config, beta=beta), params, x, eps),
    ]
    if steps > 0:
        data = np.ascontiguousarray(train_x, dtype=np.float32)
        epochs = -(-steps * batch // len(data))  # as training does: reshuffle each epoch
        order = np.concatenate([rng.permutation(len(data)) for _ in range(epochs)])
        order = order[: steps * batch]
        cases.append(Case(prefix + "adam-steps", config, params, x, eps, steps=steps, data=data,
                          step_indices=order.reshape(steps, batch),
                          step_eps=noise(steps, batch, latent)))
    return cases


def outputs(backend: Backend, case: Case) -> dict[str, np.ndarray]:
    """Every tensor the gate compares, under the gate's names, for one backend and case."""
    backend.load(case.config, case.params)
    if case.steps:
        losses = [backend.train_step(case.data, case.step_indices[k], case.step_eps[k]).loss
                  for k in range(case.steps)]
        record = {"steps.loss": np.array(losses)}
        record |= {f"steps.{name}": p for name, p in backend.params().items()}
        return record
    out = backend.forward_backward(case.x, case.eps)
    record = {"loss.reconstruction": out.reconstruction, "loss.kl": out.kl,
              "loss": np.array(out.loss)}
    record |= out.intermediates
    record |= {f"grad.{name}": g for name, g in out.grads.items()}
    return record


@dataclass
class Expectation:
    """The oracle's tensors for a case and float32 PyTorch's error on each."""

    truth: dict[str, np.ndarray]
    reference_errors: dict[str, float] = field(default_factory=dict)


def expectation(case: Case) -> Expectation:
    oracle = TorchBackend(dtype=torch.float64)
    truth = outputs(oracle, _as_float64(case))
    float32 = outputs(TorchBackend(), case)
    return Expectation(truth, {k: max_error(float32[k], v) for k, v in truth.items()})


def _as_float64(case: Case) -> Case:
    """The same case with float64 inputs (exactly the float32 values, widened)."""
    def wide(a):
        return None if a is None else a.astype(np.float64)

    return replace(case, x=wide(case.x), eps=wide(case.eps), data=wide(case.data),
                   step_eps=wide(case.step_eps))


def check(backend: Backend, case: Case, expected: Expectation) -> list[Comparison]:
    got = outputs(backend, case)
    results = []
    for tensor, truth in expected.truth.items():
        if tensor not in got:
            results.append(Comparison(case.name, tensor, np.nan, np.nan, np.nan, np.nan,
                                      "missing from the backend's outputs"))
            continue
        results.append(compare(case.name, tensor, got[tensor], truth,
                               expected.reference_errors[tensor], case.config.lr))
    return results


# ---- the versioned fixture ---------------------------------------------------------------


def write_fixture(path: Path, cases: list[Case], expectations: list[Expectation],
                  *, dataset: str) -> None:
    """Write cases, oracle tensors and calibration errors to one .npz (atomically)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"schema_version": SCHEMA_VERSION, "torch": torch.__version__, "dataset": dataset,
            "cases": []}
    for case, expected in zip(cases, expectations):
        key = case.name
        meta["cases"].append({"name": key, "config": case.config.to_dict(), "steps": case.steps,
                              "reference_errors": expected.reference_errors})
        arrays[f"{key}/x"], arrays[f"{key}/eps"] = case.x, case.eps
        # Cases share most parameter tensors: store each distinct tensor once, by content.
        refs = {}
        for n, p in case.params.items():
            digest = hashlib.sha1(np.ascontiguousarray(p).tobytes()).hexdigest()[:16]
            arrays[f"param/{digest}"] = p
            refs[n] = digest
        meta["cases"][-1]["params"] = refs
        if case.steps:
            arrays[f"{key}/step_indices"] = case.step_indices
            arrays[f"{key}/step_eps"] = case.step_eps
            # Only the rows the steps read are stored, re-indexed.
            used, inverse = np.unique(case.step_indices, return_inverse=True)
            arrays[f"{key}/data"] = case.data[used]
            arrays[f"{key}/step_indices"] = inverse.reshape(case.step_indices.shape)
        # Truth is stored in float32 (half the bytes); rounding it costs 0.5 ulp, well
        # inside the 16-ulp floors of every tolerance.
        arrays |= {f"{key}/truth/{n}": np.asarray(t, dtype=np.float32)
                   for n, t in expected.truth.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_fixture(path: Path) -> list[tuple[Case, Expectation]]:
    path = Path(path)
    if not path.exists():
        raise FixtureError(f"{path}: no such fixture; write one with `vae-bench fixture`")
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy holds one bare array
            raise TypeError(f"a single {type(loaded).__name__}, not an .npz archive")
        with loaded as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise FixtureError(f"{path}: not a readable fixture ({error}); write one with "
                           "`vae-bench fixture`") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FixtureError(
            f"{path}: fixture schema {meta.get('schema_version')}, this code reads schema "
            f"{SCHEMA_VERSION}; regenerate it with `vae-bench fixture`")
    result = []
    for entry in meta["cases"]:
        key = entry["name"]

        def take(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        steps = entry["steps"]
        params = {n: arrays[f"param/{digest}"] for n, digest in entry["params"].items()}
        case = Case(key, VAEConfig(**entry["config"]), params,
                    arrays[f"{key}/x"], arrays[f"{key}/eps"], steps=steps,
                    data=arrays.get(f"{key}/data"),
                    step_indices=arrays.get(f"{key}/step_indices"),
                    step_eps=arrays.get(f"{key}/step_eps"))
        result.append((case, Expectation(take(f"{key}/truth/"), entry["reference_errors"])))
    return result
