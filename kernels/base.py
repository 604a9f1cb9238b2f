"""The one small interface every backend implements, and the records it returns.

The harness and the agreement gate only ever talk to a ``Backend``: they never ask which one
they hold. Everything crosses the interface as float32 numpy arrays under the reference's
canonical names (``vae_ref.params``), so any two backends can be compared tensor by tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: the registry loads without PyTorch (vae-bench --help)
    from vae_ref import VAEConfig
    from vae_ref.evaluate import EvalResult
    from vae_ref.params import Params


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why."""


class BackendFailed(RuntimeError):
    """The backend could not go on with a run it had started; the message says why and what to
    do (rather than let it carry on measuring something else)."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not, when not (e.g. "numba is not installed")


class BatchLoss(NamedTuple):
    """Means over one batch, in nats per image."""

    reconstruction: float
    kl: float
    loss: float  # reconstruction + beta * kl: what the step minimised


@dataclass
class StepOutputs:
    """Forward + loss + backward of one batch, without an update."""

    reconstruction: np.ndarray  # (B,) BCE per image, nats
    kl: np.ndarray  # (B,) KL per image, nats
    loss: float  # mean over the batch of reconstruction + beta * KL
    intermediates: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # vae_ref.oracle.INTERMEDIATES
    grads: dict[str, np.ndarray] = field(default_factory=dict)  # d loss / d param, canonical names


@runtime_checkable
class Backend(Protocol):
    """A VAE implementation that can be checked against the reference and timed."""

    name: str  # registry name, e.g. "numba"
    description: str  # one line for tables and --help
    device: str  # where it computes: "cpu" or "cuda" (picks the yardstick and the peak)

    def availability(self) -> Availability:
        """Whether this backend can run here, and if not, why. Cheap; never raises."""

    def load(self, config: VAEConfig, params: Params) -> None:
        """Take the model shape from ``config`` and these weights; reset optimizer state."""

    def params(self) -> Params:
        """The current weights, as float32 copies under canonical names."""

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        """Loss terms, intermediates and gradients for batch ``x`` with noise ``eps``;
        parameters are not changed."""

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss | None:
        """One Adam step on the batch ``data[indices]``; returns its loss (before the step).

        ``eps`` (len(indices), latent) is the reparameterization noise; None draws it from the
        backend's own generator, seeded by ``load`` from ``config.seed``. Taking the whole data
        set and the indices lets a backend gather the batch inside its compiled step (a GPU
        backend keeps ``data`` resident on the device across calls; pass the same array, and
        do not modify it in between). ``want_loss=False`` says the caller will not look at
        this step's loss: a device backend may then return None instead of waiting for the
        device (timed windows); CPU backends return the loss anyway."""

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        """Mean ELBO terms per image over ``x`` (one noise sample each, seeded)."""

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Pixel logits for codes ``z``."""

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The posterior's (mu, logvar) for images ``x``."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU), so timings are honest."""

    def settings(self) -> dict[str, Any]:
        """What a results table must record about this backend (threads, options...)."""


# ---- optional capabilities --------------------------------------------------------------
# A backend may offer more than the interface above. Each extra is a protocol of its own, and
# the harness asks for it by protocol (``isinstance(backend, StageBreakdown)``), never by
# probing attribute names, so what a backend can do is written down here, in one place.


@runtime_checkable
class EpochRunner(Protocol):
    """Runs a whole epoch of training steps itself (a GPU backend replays its captured step
    from a device-side permutation, with no host round trip between steps). The harness's
    training loop hands it each epoch's order; the batches are the ones step-by-step training
    would see."""

    def train_epoch(self, data: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Adam steps on data[order[0:B]], data[order[B:2B]], ... (the last batch may be
        shorter), each drawing its own noise; returns each step's (reconstruction, KL, loss)
        as a (steps, 3) array."""


@runtime_checkable
class StageBreakdown(Protocol):
    """Says where a training step's time goes, each part timed on its own, interleaved."""

    def stage_times(self, data: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
        """Median seconds per step of each part ("step", "gemms", "fused kernels", "adam",
        ... as the backend divides its step) over ``repeats`` rounds (each part once per
        round); {} where it cannot measure them here. The harness asks after each timed
        window, a few rounds at a time, so the parts are timed beside the steps they divide.
        The backend's parameters and optimizer state are as before afterwards."""


@runtime_checkable
class LaunchFloor(Protocol):
    """A device backend whose step is many small kernels: the floor under its step time set by
    launch latency alone (a diagnostic: its failure never costs a measurement)."""

    def launch_floor(self, batch: int) -> dict[str, float]:
        """``nodes`` (kernels in one step), ``seconds_per_node`` (measured cost of one empty
        node), ``floor_seconds`` (their product), and ``launches`` (the step program's own
        count, where it differs from the nodes); {} where it cannot measure them here."""


@runtime_checkable
class DeviceInfo(Protocol):
    """Describes the accelerator a backend computes on (its name, its float32 GEMM peak), so
    the harness can report a GPU row against that GPU without knowing which library drives
    it. CPU backends need not offer it: the harness measures the host itself."""

    def device_name(self) -> str:
        """The device's marketing name, e.g. "NVIDIA H100 80GB HBM3"."""

    def gemm_peak(self) -> tuple[float, str]:
        """Best GFLOP/s of a large float32 GEMM on the device, exactly as the backend's
        GEMMs run (TF32 off unless the backend uses it), and how it was measured."""


@runtime_checkable
class MemoryReport(Protocol):
    """Says how much memory a training step holds at its peak."""

    def peak_memory_bytes(self, data: np.ndarray, batch: int) -> int:
        """Bytes held at the peak of one training step at ``batch`` on ``data``: parameters,
        gradients, optimizer state and the step's workspaces (activations kept for the
        backward, scratch buffers), as the backend measures them (on a GPU, the device
        allocator's peak over a step). Parameters and optimizer state are as before
        afterwards."""


@runtime_checkable
class MixedPrecision(Protocol):
    """Computes its GEMMs on operands rounded to a narrower type than float32 (bf16 or TF32
    inputs, float32 accumulation), everything else in float32. The gate holds it to the same float64
    truth, with tolerances calibrated by the reference computing the same way
    (``vae_ref.oracle.expectation(case, gemm_inputs)``), and every table labels its rows by
    this precision. A backend without it computes in float32."""

    gemm_inputs: str  # one of vae_ref.oracle.GEMM_INPUTS: "float32", "bf16" or "tf32"


def gemm_inputs_of(backend: Backend) -> str:
    """The precision of a backend's GEMM operands: what its gate is calibrated by and what
    its rows are labelled with ("float32" unless it says otherwise, by ``MixedPrecision``)."""
    return backend.gemm_inputs if isinstance(backend, MixedPrecision) else "float32"
