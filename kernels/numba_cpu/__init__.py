"""The Numba CPU backend: the reference VAE as float32 compiled kernels, no PyTorch at run time,
and its bf16 mixed-precision mode (``numba-bf16``: bf16 GEMM inputs, float32 everywhere else,
``step.py`` says what is rounded where; its GEMMs run on an Intel CPU's AMX or AVX512_BF16
through oneMKL, on another vendor's AVX512_BF16 through oneDNN, ``engines.py``).

Import is cheap and never fails: numba is imported when the backend is first used, so the
harness can list this backend (and say why it is unavailable) on any machine.
"""

from __future__ import annotations

import functools
import importlib.util
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from vae_ref import VAEConfig
from vae_ref.config import ADAM_BETAS, ADAM_EPS
from vae_ref.evaluate import EvalResult
from vae_ref.params import Params

from ..base import Availability, BackendUnavailable, BatchLoss, StepOutputs
from ..fused_buffers import split_heads, step_outputs
from ..inputs import (
    checked_images,
    checked_indices,
    checked_noise,
    decode_on_host,
    evaluate_in_batches,
)
from ..timing import interleaved_times

PRECISIONS = ("float32", "bf16")
# Which step runs: "pooled" (pooled_step.py: one thread pool, oneMKL sequential per share),
# "serial" (step.py: one thread runs the kernels, NumPy's BLAS threads each GEMM), or "auto".
STEP_FORMS = ("auto", "pooled", "serial")
# Where "auto" runs the float32 step pooled: the CPUs on which it was measured faster than
# the serial step (results/README.md, "The float32 step's form per CPU"), as (vendor, AVX-512:
# required True, excluded False, either None, where it was measured). Elsewhere (an AMD Zen 4
# with AVX-512, an Arm CPU) the serial step stays until measured there.
POOLED_FLOAT32_CPUS = (
    ("GenuineIntel", None, "an Intel Xeon with AVX-512 and AMX"),
    ("AuthenticAMD", False, "an AMD EPYC Zen 3 (AVX2, no AVX-512)"),
)


def float32_step_form(vendor: str | None = None, flags: list[str] | None = None) -> tuple[str, str]:
    """The float32 step "auto" picks on this machine (``vendor``, ``flags``: default this
    CPU's), and why: pooled where oneMKL is installed and the CPU matches POOLED_FLOAT32_CPUS,
    serial elsewhere."""
    from .. import cpu_features
    from . import engines

    try:
        engine = engines.chosen("float32")[0]
    except ValueError as error:
        return "serial", str(error)
    problem = engines.module(engine).problem("float32")
    if problem:
        return "serial", problem
    vendor = cpu_features.cpu_vendor() if vendor is None else vendor
    flags = (cpu_features.cpu_isa() or []) if flags is None else flags
    avx512 = "avx512f" in flags
    for measured_vendor, needs_avx512, measured_on in POOLED_FLOAT32_CPUS:
        if vendor == measured_vendor and needs_avx512 in (None, avx512):
            name = engines.module(engine).NAME
            measured = "" if engine == "onemkl" else " (on oneMKL)"
            return "pooled", (
                f"{name} is installed; the pooled step{measured} ran faster on {measured_on}"
            )
    places = "; ".join(place for _, _, place in POOLED_FLOAT32_CPUS)
    return "serial", (
        f"the pooled oneMKL step is measured faster on {places} only; this CPU is "
        f"{vendor or 'an unknown vendor'}'s, {'with' if avx512 else 'without'} AVX-512"
    )


def _stages(median: dict[str, float]) -> dict[str, float]:
    """stage_times' parts from the medians of the step's parts: the fused kernels are forward +
    backward less the GEMMs; Adam, where it runs inside the backward pass, the step less
    forward + backward and the gather."""
    adam = (
        median["adam"]
        if "adam" in median
        else max(median["step"] - median["forward+backward"] - median["gather"], 0.0)
    )
    return {
        "step": median["step"],
        "gemms": median["gemms"],
        "fused kernels": max(median["forward+backward"] - median["gemms"], 0.0),
        "adam": adam,
        "gather": median["gather"],
    }


def _threading_layer() -> str | None:
    """Numba's threading layer in this process (omp, tbb, workqueue), None before its first
    parallel region ran."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return None


class NumbaBackend:
    device = "cpu"

    def __init__(
        self,
        threads: int | None = None,
        precision: str = "float32",
        allow_emulated: bool = False,
        step_form: str = "auto",
    ):
        """``precision``: "float32", or "bf16" for bf16 GEMM inputs (float32 accumulation,
        master weights and elementwise math). ``allow_emulated``: run bf16 on a CPU without
        bf16 dot-product hardware, where oneMKL emulates it (for checking its numbers; never
        for timing, which is why the harness does not set it). ``step_form``: one of
        STEP_FORMS; bf16 is always pooled, float32 "auto" is ``float32_step_form()``."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if step_form not in STEP_FORMS:
            raise ValueError(f"step_form must be one of {STEP_FORMS}, got {step_form!r}")
        if precision == "bf16" and step_form == "serial":
            raise ValueError(
                "the bf16 step runs pooled only (step.py's bf16 form is the "
                "serial twin tests hold it to)"
            )
        self.threads = threads
        self.precision = precision
        self.allow_emulated = allow_emulated
        self.step_form_asked = step_form
        self.compile_seconds: float | None = None
        self.description = (
            "Numba JIT, bf16 GEMM inputs (oneMKL or oneDNN by CPU, float32 accumulation), "
            "float32 master weights, fused kernels and Adam"
            if self.bf16
            else "Numba JIT, fused float32 kernels, BLAS GEMMs (oneMKL in one thread pool where "
            "the step runs pooled), flat-buffer Adam"
        )

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @functools.cached_property
    def step_form(self) -> tuple[str, str]:
        """("pooled" or "serial", why) for this backend on this machine, decided once (it
        reads /proc/cpuinfo; ``pooled`` is asked on every step)."""
        if self.bf16:
            return "pooled", "the bf16 step runs pooled"
        if self.step_form_asked == "auto":
            return float32_step_form()
        return self.step_form_asked, "asked for"

    @property
    def pooled(self) -> bool:
        return self.step_form[0] == "pooled"

    @property
    def gemm_inputs(self) -> str:
        """What the harness's gate calibrates against (kernels.base.MixedPrecision): the
        precision of the GEMM operands, which is the backend's precision."""
        return self.precision

    @property
    def name(self) -> str:
        # A property, not set in __init__, so that a subclass's class attribute still names it.
        return "numba-bf16" if self.bf16 else "numba"

    def availability(self) -> Availability:
        for module in ("numba", "scipy", "threadpoolctl"):
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"{module} is not installed (pip install {module})")
        from . import engines

        try:
            engine = engines.chosen(self.precision)[0]
        except ValueError as error:  # an engine asked for that does not exist
            return Availability(False, str(error))
        if self.bf16 or self.step_form_asked == "pooled":
            # bf16 also needs bf16 hardware, unless its emulation is asked for (checks only,
            # where the engine has one: engine.problem).
            reason = (
                engines.bf16_unavailable_reason()
                if self.bf16 and not self.allow_emulated
                else engines.module(engine).problem(self.precision)
            )
            if reason:
                return Availability(False, reason)
        return Availability(True)

    @property
    def engine(self) -> str:
        """The GEMM engine of this process's pooled step in this precision (engines.py)."""
        from . import engines

        return engines.in_process(self.precision)

    # -- setup ---------------------------------------------------------------------------

    def _require(self):
        status = self.availability()
        if not status.available:
            raise BackendUnavailable(f"numba backend unavailable: {status.reason}")
        from . import step  # compiles lazily; the import itself is quick

        if not self.pooled:
            return step
        from . import engines

        engines.module(self.engine).load()  # before any pooled step compiles or loads
        from . import pooled_step

        return pooled_step

    def load(self, config: VAEConfig, params: Params) -> None:
        step = self._require()
        from ..flat_layout import make_layout
        from .threads import configure_threads

        self.threads_in_use = configure_threads(self.threads)
        self.config = config
        self.layout = make_layout(config)
        self.flat = self.layout.pack(params, config)
        # The weights as the GEMMs read them: bf16 copies (all of params, biases unused); in
        # the pooled float32 step the float32 weights themselves; in the serial one None.
        self.flat16 = None
        self.gemm_engine = None
        if self.pooled:
            from . import engines

            engine = engines.module(self.engine)
            self.gemm_engine = {**engine.load(), "engine": engine.engine_for(self.precision)}
            self._claim_engine()
            self.flat16 = np.zeros(self.flat.shape, np.uint16) if self.bf16 else self.flat
        self._round_weights()
        self.grads = np.zeros_like(self.flat)
        self.m = np.zeros_like(self.flat)
        self.v = np.zeros_like(self.flat)
        self.steps_taken = 0
        self.rng = np.random.default_rng(config.seed)
        self._workspaces = {}
        self._step = step
        if self.compile_seconds is None:
            self.compile_seconds = self._warm_up()

    def _warm_up(self) -> float:
        """Compile (or load from Numba's cache) every kernel on a throw-away copy; returns the
        seconds it took, so compile time is reported apart from run time."""
        started = time.perf_counter()
        config = self.config
        data = np.zeros((2, config.input_dim), np.float32)
        eps = np.zeros((2, config.latent_dim), np.float32)
        saved = (self.flat.copy(), self.m.copy(), self.v.copy(), self.steps_taken)
        self.train_step(data, np.arange(2), eps)
        self.forward_backward(data, eps)
        self.flat[:], self.m[:], self.v[:] = saved[0], saved[1], saved[2]
        self.steps_taken = saved[3]
        self._round_weights()
        self._workspaces.clear()
        return time.perf_counter() - started

    def _claim_engine(self) -> None:
        """oneMKL to one thread, before the pooled step runs on it: Numba's workers split the
        step and each calls oneMKL on its share, so oneMKL's own pool would only oversubscribe
        the cores. Set again on every entry (a call of well under a microsecond), since
        another backend in the process may have set it since (``configure_threads`` of the
        serial step sets every BLAS, oneMKL too, to its thread count). oneDNN needs nothing:
        its GNU OpenMP runs a call made inside Numba's OpenMP region on the calling thread
        (nested regions are inactive by default, OMP_MAX_ACTIVE_LEVELS)."""
        if self.pooled and self.engine == "onemkl":
            from . import onemkl

            onemkl.set_threads(1)

    def _round_weights(self) -> None:
        """The weights' bf16 copies from the float32 masters, where they were set from outside
        the step (load, a restore); inside it Adam writes them as it updates."""
        if self.flat16 is not None and self.flat16 is not self.flat:
            from .bf16 import round_into

            round_into(self.flat, self.flat16)

    def _set_batch(self, ws, x: np.ndarray) -> None:
        """A batch given from outside the step (gate, evaluation) into the workspace, with its
        bf16 copy (inside the step the gather writes both)."""
        ws.xb[...] = x
        if ws.xb16 is not None and ws.xb16 is not ws.xb:
            from .bf16 import round_into

            round_into(ws.xb, ws.xb16)

    def _workspace(self, batch: int):
        ws = self._workspaces.get(batch)
        if ws is None:
            c = self.config
            from .step import make_workspace

            ws = make_workspace(
                batch,
                c.input_dim,
                c.hidden_dim,
                c.latent_dim,
                bf16=self.bf16,
                shares=self.threads_in_use if self.pooled else None,
            )
            self._workspaces[batch] = ws
        return ws

    def params(self) -> Params:
        return self.layout.unpack(self.flat)

    # -- computation -----------------------------------------------------------------------

    def _noise(self, batch: int, eps: np.ndarray | None) -> np.ndarray:
        if eps is None:
            return self.rng.standard_normal((batch, self.config.latent_dim), dtype=np.float32)
        return checked_noise(eps, batch, self.config.latent_dim)

    def _images(self, x: np.ndarray) -> np.ndarray:
        # Compiled code does not check shapes or bounds: everything is checked here first.
        return checked_images(x, self.config.input_dim)

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        x = self._images(x)
        eps = self._noise(len(x), eps)
        ws = self._workspace(len(x))
        self._set_batch(ws, x)
        self._claim_engine()
        self._step.forward(self.flat, self.flat16, self.layout.slot_offsets, ws.xb, eps, ws)
        self._step.backward(
            self.flat,
            self.flat16,
            self.grads,
            self.layout.slot_offsets,
            ws.xb,
            eps,
            float(self.config.beta),
            ws,
        )
        buffers = {
            name: getattr(ws, name) for name in ("bce", "kl", "h", "heads", "z", "dech", "logits")
        }
        return step_outputs(
            buffers, self.config.latent_dim, self.config.beta, self.layout.unpack(self.grads)
        )

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss:
        data = self._images(data)
        indices = checked_indices(indices, len(data))
        eps = self._noise(len(indices), eps)
        self.steps_taken += 1
        c = self.config
        self._claim_engine()
        return BatchLoss(
            *self._step.train_step(
                data,
                indices,
                eps,
                self.flat,
                self.flat16,
                self.grads,
                self.m,
                self.v,
                self.layout.slot_offsets,
                float(c.beta),
                float(c.lr),
                ADAM_BETAS[0],
                ADAM_BETAS[1],
                ADAM_EPS,
                float(self.steps_taken),
                self._workspace(len(indices)),
            )
        )

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._images(x)
        ws = self._workspace(len(x))
        self._set_batch(ws, x)
        eps = np.zeros((len(x), self.config.latent_dim), np.float32)
        self._claim_engine()
        self._step.forward(
            self.flat, self.flat16, self.layout.slot_offsets, ws.xb, eps, ws
        )  # no backward
        return split_heads(ws.heads, self.config.latent_dim)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return decode_on_host(self.params(), z)

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        def terms(xb: np.ndarray, eps: np.ndarray):
            ws = self._workspace(len(xb))
            self._set_batch(ws, xb)
            self._claim_engine()
            self._step.forward(self.flat, self.flat16, self.layout.slot_offsets, ws.xb, eps, ws)
            return ws.bce, ws.kl

        return evaluate_in_batches(
            terms, self._images(x), self.config.latent_dim, seed=seed, batch_size=batch_size
        )

    def stage_times(self, data: np.ndarray, batch: int, repeats: int = 50) -> dict[str, float]:
        """Median seconds of each part of the compiled step, measured interleaved (one call of
        each part per round, so drift hits all alike): the whole step, its GEMMs alone (same
        shapes and buffers), the fused kernels (forward + backward minus the GEMMs), Adam and
        the gather. Where Adam runs inside the backward pass (``ADAM_FUSED``: pooled_step),
        its part is the step less forward + backward and the gather. Parameters and
        optimizer state are restored afterwards."""
        data = self._images(data)
        ws = self._workspace(batch)
        indices = np.arange(batch) % len(data)
        eps = self._noise(batch, None)
        saved = (self.flat.copy(), self.m.copy(), self.v.copy())
        self._claim_engine()
        times = interleaved_times(self._step_parts(data, indices, eps, ws), repeats)
        self.flat[:], self.m[:], self.v[:] = saved
        self._round_weights()
        return _stages({name: float(np.median(t)) for name, t in times.items()})

    def _step_parts(self, data, indices, eps, ws) -> dict[str, Callable[[], object]]:
        """The compiled step and its parts as calls without arguments, for stage_times."""
        c, off = self.config, self.layout.slot_offsets
        s = self._step
        beta, lr = float(c.beta), float(c.lr)
        parts = {
            "step": lambda: s.train_step(
                data,
                indices,
                eps,
                self.flat,
                self.flat16,
                self.grads,
                self.m,
                self.v,
                off,
                beta,
                lr,
                ADAM_BETAS[0],
                ADAM_BETAS[1],
                ADAM_EPS,
                10.0,
                ws,
            ),
            "forward+backward": lambda: (
                s.forward(self.flat, self.flat16, off, ws.xb, eps, ws),
                s.backward(self.flat, self.flat16, self.grads, off, ws.xb, eps, beta, ws),
            ),
            "gemms": lambda: s.gemms_only(self.flat, self.flat16, self.grads, off, eps, ws),
            "gather": lambda: s.gather(data, indices, ws),
        }
        if not s.ADAM_FUSED:
            parts["adam"] = lambda: s.adam(
                self.flat,
                self.grads,
                self.m,
                self.v,
                lr,
                ADAM_BETAS[0],
                ADAM_BETAS[1],
                ADAM_EPS,
                10.0,
                self.flat16,
            )
        return parts

    def peak_memory_bytes(self, data: np.ndarray, batch: int) -> int:
        """The four flat buffers (parameters, gradients, Adam's two moments) and the batch's
        workspace, all made before the first step, plus the peak of what one compiled step
        allocates for itself, traced by tracemalloc: Numba's runtime allocates through
        CPython's raw allocator (numba/core/runtime/nrt.py: memsys_use_cpython_allocator),
        which tracemalloc sees (measured: about 1 KB, array headers; no data copies)."""
        # Each array once: in the pooled float32 step the weights' and operands' "copies"
        # are the float32 arrays themselves.
        arrays = (self.flat, self.flat16, self.grads, self.m, self.v, *self._workspace(batch))
        held = sum(a.nbytes for a in {id(a): a for a in arrays if a is not None}.values())
        indices = np.arange(batch) % len(data)
        eps = self._noise(batch, None)
        saved = (self.flat.copy(), self.m.copy(), self.v.copy(), self.steps_taken)
        self.train_step(data, indices, eps)  # compiled and warm before the trace
        already = tracemalloc.is_tracing()
        if not already:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            self.train_step(data, indices, eps)
            transient = tracemalloc.get_traced_memory()[1] - base
        finally:
            if not already:
                tracemalloc.stop()
            self.flat[:], self.m[:], self.v[:] = saved[0], saved[1], saved[2]
            self.steps_taken = saved[3]
            self._round_weights()
        return held + max(transient, 0)

    def synchronize(self) -> None:
        """CPU work is done when the call returns."""

    def settings(self) -> dict:
        import numba

        settings = {
            "numba": numba.__version__,
            "precision": self.precision,
            "threads": getattr(self, "threads_in_use", None),
            "compile_seconds": self.compile_seconds,
        }
        form, why = self.step_form
        settings["step"] = f"{form} ({why})"
        if self.pooled:
            from . import engines

            engine = getattr(self, "gemm_engine", None) or {}
            settings.update(
                {
                    f"gemm_{key}": engine.get(key)
                    for key in ("engine", "version", "build", "isa", "library")
                }
            )
            settings["gemm_choice"] = engines.why_in_process(self.precision)
            settings["step_shares"] = (
                self.threads_in_use if hasattr(self, "threads_in_use") else None
            )  # pooled_step: Numba workers, the engine sequential in each
            # oneDNN runs a call on its calling thread inside Numba's OpenMP ("omp") workers
            # only; under another layer each call would start an OpenMP team of its own.
            settings["threading_layer"] = _threading_layer()
        else:
            settings["gemm_engine"] = "NumPy BLAS sgemm (np.dot, on its own threads)"
        if self.bf16:
            from . import engines
            from .step import GRAD_BLOCK_ROWS, GRAD_BLOCKS_MIN_BATCH

            settings["bf16_emulated"] = engines.bf16_unavailable_reason() is not None
            # pooled_step.weight_rows_update: where Adam takes its gradients from.
            settings["adam_gradients"] = (
                f"blocks of {GRAD_BLOCK_ROWS} rows in cache, their GEMMs' shared operand "
                f"packed once, at batches >= {GRAD_BLOCKS_MIN_BATCH}; else memory"
                if engines.packs_b(self.engine)
                else "memory (the engine cannot pack the blocks' shared operand once)"
            )
        return settings
