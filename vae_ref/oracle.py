"""The truth every backend is checked against: the reference run in float64 on the gate's cases.

A case is one set of inputs every party receives identically (parameters, a real batch, the
noise ε, and for the Adam case the batches and noise of K steps). ``outputs`` runs the
reference on a case at any precision and returns every tensor the agreement gate compares
under its gate name: the loss terms, each intermediate and gradient of one forward/backward,
or the losses and parameters over K Adam steps. ``expectation`` runs it twice: in float64 (the
oracle, each tensor's truth) and in float32 (the calibration: how far float32 PyTorch itself
lands from the truth, which sets each tensor's tolerance; for the K-step case the farthest of
several runs that add every sum in another order, ``calibrations``). The fixture
(``vae_ref.fixture``) stores both, so a backend can be checked without PyTorch.

A mixed-precision backend (bf16 or TF32 GEMM inputs) is held to the same float64 truth, with
the calibration of the reference computing as it does (``expectation(case, gemm_inputs)``:
``vae_ref.mixed_precision``), so its tolerances come from the same rule, never by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
import torch

from .config import ADAM_BETAS, ADAM_EPS, GATE_ADAM_STEPS, VAEConfig
from .gate_tensors import adam_step_tensors, step_tensors, steps_param_name
from .losses import loss_terms
from .mixed_precision import GEMM_INPUT_ROUNDINGS, with_gemm_inputs
from .model import AE, VAE, build_model
from .params import Params, export_params, import_params
from .summation_orders import Relabelling

EXTREME_LOGIT = 100.0  # |logits| this large overflow a naive sigmoid/BCE in float32
INTERMEDIATES = ("h", "mu", "logvar", "z", "dec_h", "logits")  # of one forward pass, in order
# The precisions of GEMM operands a calibration exists for.
GEMM_INPUTS = ("float32", *GEMM_INPUT_ROUNDINGS)


@dataclass(frozen=True)
class Case:
    """One set of inputs every party receives identically."""

    name: str  # "z20/batch", ...
    config: VAEConfig
    params: Params
    x: np.ndarray  # (B, input_dim) float32: the batch of a single forward/backward
    eps: np.ndarray  # (B, latent) float32
    # K Adam steps (steps > 0): batch k is data[step_indices[k]] with noise step_eps[k].
    steps: int = 0
    data: np.ndarray | None = None
    step_indices: np.ndarray | None = None
    step_eps: np.ndarray | None = None


def build_cases(
    train_x: np.ndarray,
    latent: int,
    *,
    seed: int = 0,
    steps: int = GATE_ADAM_STEPS,
    batch: int = 128,
    beta: float = 4.0,
    hidden: int = 512,
) -> list[Case]:
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
    config = VAEConfig(latent_dim=latent, hidden_dim=hidden, seed=seed, batch_size=batch)
    params = export_params(build_model(config))
    x = np.ascontiguousarray(train_x[:batch], dtype=np.float32).copy()
    x[0], x[1] = 0.0, 1.0

    def noise(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    eps = noise(batch, latent)
    prefix = f"z{latent}/"
    cases = [
        Case(prefix + "batch", config, params, x, eps),
        Case(
            prefix + "partial-batch",
            config,
            params,
            np.ascontiguousarray(train_x[batch : batch + 37], dtype=np.float32),
            noise(37, latent),
        ),
        Case(prefix + "extreme-logits", config, _extreme_logits(params), x, eps),
        Case(prefix + f"beta{beta:g}", replace(config, beta=beta), params, x, eps),
    ]
    if steps > 0:
        cases.append(_adam_steps_case(prefix, config, params, x, eps, train_x, steps, rng))
    return cases


def _extreme_logits(params: Params) -> Params:
    """``params`` with output biases of +-EXTREME_LOGIT added, alternating by pixel."""
    extreme = dict(params)
    bias = params["dec.out.bias"]
    signs = np.where(np.arange(len(bias)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    extreme["dec.out.bias"] = (bias + EXTREME_LOGIT * signs).astype(np.float32)
    return extreme


def _adam_steps_case(
    prefix: str,
    config: VAEConfig,
    params: Params,
    x: np.ndarray,
    eps: np.ndarray,
    train_x: np.ndarray,
    steps: int,
    rng: np.random.Generator,
) -> Case:
    """``steps`` Adam steps over batches of ``train_x`` shuffled as training does (reshuffled
    each epoch), with their noise, drawn from ``rng`` after the single-step cases'."""
    batch, latent = config.batch_size, config.latent_dim
    data = np.ascontiguousarray(train_x, dtype=np.float32)
    epochs = -(-steps * batch // len(data))
    order = np.concatenate([rng.permutation(len(data)) for _ in range(epochs)])
    order = order[: steps * batch]
    return Case(
        prefix + "adam-steps",
        config,
        params,
        x,
        eps,
        steps=steps,
        data=data,
        step_indices=order.reshape(steps, batch),
        step_eps=rng.standard_normal((steps, batch, latent)).astype(np.float32),
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def forward_backward(
    model: VAE | AE, x: torch.Tensor, eps: torch.Tensor | None, config: VAEConfig
) -> dict[str, np.ndarray]:
    """One forward pass, loss and backward through ``model`` (its gradients are overwritten);
    every tensor under its gate name: ``loss.reconstruction``, ``loss.kl`` (per image),
    ``loss``, the intermediates, and ``grad.<parameter>``."""
    model.zero_grad(set_to_none=True)
    out = model(x, eps)
    for t in (out.h, out.mu, out.z, out.dec_h, out.logits):
        if t.requires_grad:
            t.retain_grad()
    terms = loss_terms(out, x, config)
    terms.loss.backward()
    return step_tensors(
        _numpy(terms.reconstruction),
        _numpy(terms.kl),
        terms.loss.item(),
        {
            name: _numpy(getattr(out, name))
            for name in INTERMEDIATES
            if getattr(out, name) is not None
        },
        {n: _numpy(_grad(p)).copy() for n, p in model.named_parameters()},
    )


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None  # every parameter is on the loss's path: backward set it
    return p.grad


# -- ReLU kinks along the K-step trajectory ---------------------------------------------------
#
# A ReLU's gradient is 1 or 0 by the sign of its pre-activation. Where a pre-activation lies
# within float32's rounding of zero, both signs are correct roundings: one CPU's BLAS switches
# the unit on for that image, another's off, and from then on the unit's fan-in weights follow
# two different, equally right Adam trajectories (seen: a dying unit of the z = 2 case, its
# pre-activation 3.5e-8 at step 7, moved 1.4 lr apart over 50 steps in Numba's float32, while
# float32 PyTorch happened to round as float64 did; on another CPU it could be the other way).
# The float64 oracle marks every unit that came that close, by the probabilistic bound on a
# float32 dot product of n terms, lambda sqrt(n) u * sum |terms| with u = eps32 / 2 (Higham
# and Mary, "A New Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput.
# 41(5), 2019), lambda = 4; the worst-case bound n u (Higham, Accuracy and Stability, 3.1)
# marked half the encoder's units at z = 20 and would leave them unjudged. The gate does not
# judge the marked units' own parameters after K steps: the single-step cases judge every
# element, and an optimizer bug moves every other weight too.
KINK_LAMBDA = 4.0
KINK_LAYERS = {  # ReLU layer -> the parameters its units own: (name, axis of the unit)
    "enc.fc1": (
        ("enc.fc1.weight", 0),
        ("enc.fc1.bias", 0),
        ("enc.mu.weight", 1),
        ("enc.logvar.weight", 1),
        ("enc.code.weight", 1),
    ),
    "dec.fc1": (("dec.fc1.weight", 0), ("dec.fc1.bias", 0), ("dec.out.weight", 1)),
}


def _near_kink(layer: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """Which of ``layer``'s units has, for some row of ``inputs``, a pre-activation within
    float32's rounding of zero: (units,) bool."""
    with torch.no_grad():
        pre = inputs @ layer.weight.T + layer.bias
        scale = inputs.abs() @ layer.weight.abs().T + layer.bias.abs()
        unit_roundoff = float(np.finfo(np.float32).eps) / 2
        bound = KINK_LAMBDA * math.sqrt(layer.weight.shape[1]) * unit_roundoff * scale
        return (pre.abs() <= bound).any(dim=0)


def _kink_masks(model: VAE | AE, units: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per K-step parameter tensor, the elements owned by a unit that came near a kink."""
    params = dict(model.named_parameters())
    masks = {}
    for layer, owned in KINK_LAYERS.items():
        for name, axis in owned:
            if name in params:
                shape = params[name].shape
                unit = units[layer].cpu().numpy()
                mask = (
                    unit
                    if len(shape) == 1
                    else (np.broadcast_to(unit[:, None] if axis == 0 else unit[None, :], shape))
                )
                masks[steps_param_name(name)] = np.ascontiguousarray(mask)
    return masks


def adam_steps(
    model: VAE | AE, case: Case, kinks: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """``case.steps`` steps of torch.optim.Adam (the reference's optimizer) over the case's
    batches and noise: each step's loss (before its update) and the parameters after, in the
    canonical float32 form in which every backend reports them (``export_params``). Given a
    dict ``kinks``, fills it with the elements of each parameter owned by a unit that came
    near a ReLU kink on the way (``_near_kink``)."""
    dtype = next(model.parameters()).dtype
    optimizer = torch.optim.Adam(
        model.parameters(), lr=case.config.lr, betas=ADAM_BETAS, eps=ADAM_EPS
    )
    losses = []
    # cast: KINK_LAYERS names the models' ReLU layers, each an nn.Linear
    near = {
        layer: torch.zeros(
            cast(torch.nn.Linear, model.get_submodule(layer)).out_features, dtype=torch.bool
        )
        for layer in KINK_LAYERS
    }
    for k in range(case.steps):
        # steps > 0: a K-step case carries its batches and noise (build_cases, read_fixture)
        assert case.data is not None and case.step_indices is not None
        assert case.step_eps is not None
        x = torch.from_numpy(case.data[case.step_indices[k]]).to(dtype)
        eps = torch.from_numpy(case.step_eps[k]).to(dtype)
        out = model(x, eps)
        if kinks is not None:
            near["enc.fc1"] |= _near_kink(model.enc.fc1, x)
            near["dec.fc1"] |= _near_kink(model.dec.fc1, out.z.detach())
        terms = loss_terms(out, x, case.config)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        losses.append(terms.loss.item())
    if kinks is not None:
        kinks.update(_kink_masks(model, near))
    return adam_step_tensors(losses, export_params(model))


def outputs(
    case: Case,
    dtype: torch.dtype,
    kinks: dict[str, np.ndarray] | None = None,
    gemm_inputs: str = "float32",
) -> dict[str, np.ndarray]:
    """Every tensor the gate compares, from the reference run at ``dtype`` on ``case`` (its
    float32 inputs widened exactly when ``dtype`` is wider), its GEMM operands rounded to
    ``gemm_inputs``; ``kinks`` as for ``adam_steps``."""
    if gemm_inputs not in GEMM_INPUTS:
        raise ValueError(f"gemm_inputs must be one of {GEMM_INPUTS}, got {gemm_inputs!r}")
    model = build_model(case.config, dtype=dtype)
    import_params(model, case.params)
    if gemm_inputs != "float32":
        with_gemm_inputs(model, gemm_inputs)
    if case.steps:
        return adam_steps(model, case, kinks)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return forward_backward(model, tensor(case.x), tensor(case.eps), case.config)


def max_error(got: np.ndarray, truth: np.ndarray) -> float:
    """The calibration measure: max |got - truth| (inf if ``got`` has non-finite values)."""
    got = np.asarray(got, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - np.asarray(truth, dtype=np.float64)))) if got.size else 0.0


@dataclass
class Expectation:
    """The oracle's tensors for a case and float32 PyTorch's error on each."""

    truth: dict[str, np.ndarray]
    reference_errors: dict[str, float] = field(default_factory=dict)
    # Per K-step tensor, the elements not judged: owned by a unit that came near a ReLU kink.
    unjudged: dict[str, np.ndarray] = field(default_factory=dict)


# How many float32 runs calibrate the K-step case: the case as given, and relabellings of it
# that add each sum in another order (``summation_orders``). One run is one sample of where
# Adam takes float32's rounding: over K steps a weight whose gradient sits within rounding of
# zero, or a unit whose pre-activation does (after its weights drifted: beyond the kink
# bound above), goes about +-lr one way or the other, and one run may happen to go float64's
# way everywhere while a correct backend does not. The tolerance is taken from the farthest
# run; results/README.md ("The K-step gate") has the measurements behind the count.
CALIBRATION_RUNS = 12


def calibrations(
    case: Case, gemm_inputs: str = "float32", runs: int = CALIBRATION_RUNS
) -> list[dict[str, np.ndarray]]:
    """Float32 PyTorch's tensors of ``case`` with its GEMM operands in ``gemm_inputs``: one
    run for a single-step case; for a K-step case ``runs`` runs, the first on the case as
    given, the others on seeded relabellings of it, each under the case's own labels."""
    first = outputs(case, torch.float32, gemm_inputs=gemm_inputs)
    if not case.steps:
        return [first]
    rng = np.random.default_rng([case.config.seed, case.config.latent_dim, case.steps])
    others = []
    for _ in range(runs - 1):
        relabelling = Relabelling(case, rng)
        run = outputs(relabelling.case(case), torch.float32, gemm_inputs=gemm_inputs)
        others.append(relabelling.restore(run))
    return [first, *others]


def expectation(
    case: Case,
    gemm_inputs: str = "float32",
    truth: Expectation | None = None,
    runs: int = CALIBRATION_RUNS,
) -> Expectation:
    """The float64 truth of every tensor of ``case``, float32 PyTorch's error on each (on
    the elements judged; for the K-step case the largest over ``runs`` summation orders,
    ``calibrations``) with its GEMM operands in ``gemm_inputs``, and for the K-step case
    the elements near a ReLU kink. ``truth``: an expectation of the same case whose truth and
    kinks to reuse (the float64 run is the same for every calibration)."""
    if truth is None:
        kinks: dict[str, np.ndarray] = {}
        reference = outputs(case, torch.float64, kinks)
    else:
        reference, kinks = truth.truth, truth.unjudged
    measured = calibrations(case, gemm_inputs, runs)
    return Expectation(
        reference,
        {k: calibration_error(measured, k, v, kinks) for k, v in reference.items()},
        kinks,
    )


def calibration_error(
    runs: list[dict[str, np.ndarray]], tensor: str, truth: np.ndarray, kinks: dict[str, np.ndarray]
) -> float:
    """The largest error of ``runs`` on ``tensor`` against its ``truth``, on the elements
    judged (those of ``kinks[tensor]`` left out)."""
    judged = ~kinks[tensor] if tensor in kinks else ...
    return max(max_error(run[tensor][judged], truth[judged]) for run in runs)
