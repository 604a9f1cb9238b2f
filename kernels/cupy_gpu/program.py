"""The training step as data: a list of GEMMs and kernel launches over named buffers.

One list is built per (batch size, step kind) and handed to an executor: the CUDA executor
launches it (or captures it once as a CUDA Graph and replays it); the tests' NumPy executor
runs the same list through NumPy twins of each kernel (``tests/gpu_verification/``), which is
how the wiring — which buffer goes to which argument, every GEMM's transposes and leading
dimensions, every grid — is tested on a machine without a GPU. Nothing here imports CuPy.

Buffer names: workspace arrays by their role (``h``, ``heads``, ...); ``p:<tensor>`` and
``g:<tensor>`` are views of one parameter / gradient tensor inside the flat buffers
(``p:heads.weight`` is the packed (2Z, H) mu + logvar weight); ``step`` is the device-side step
counter (uint32), ``loss`` the batch's (reconstruction, KL, loss) in float64,
``column_partials`` the column sums' per-chunk sums where a batch is split into row chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_ref import VAEConfig
from vae_ref.config import ADAM_BETAS, ADAM_EPS

from ..flat_layout import Layout
from . import launch
from .gemm import GemmCall, plan_gemm

ADAM_KERNELS = ("adam_bias_corrections", "adam")  # Adam's launches, in order


# -- kernel arguments: typed, because a RawKernel passes a Python float as a C double ----------


@dataclass(frozen=True)
class Buf:
    name: str  # a pointer to this buffer's first element


@dataclass(frozen=True)
class Null:
    """A null pointer (e.g. no step counter to advance)."""


@dataclass(frozen=True)
class Scalar:
    value: int | float
    ctype: str  # "int", "float", "double" or "unsigned long long"

    DTYPES = {
        "int": np.int32,
        "float": np.float32,
        "double": np.float64,
        "unsigned long long": np.uint64,
    }

    def numpy(self):
        return self.DTYPES[self.ctype](self.value)


def i32(value: int) -> Scalar:
    return Scalar(int(value), "int")


def f32(value: float) -> Scalar:
    return Scalar(float(value), "float")


def f64(value: float) -> Scalar:
    return Scalar(float(value), "double")


def u64(value: int) -> Scalar:
    return Scalar(int(value), "unsigned long long")


Arg = Buf | Null | Scalar


def resolve(arg: Arg, buffers: dict, null):
    """What an executor passes for ``arg``: the named buffer, its ``null``, or the typed
    scalar."""
    if isinstance(arg, Buf):
        try:
            return buffers[arg.name]
        except KeyError:
            raise KeyError(f"the program names buffer {arg.name!r}, which was not given") from None
    if isinstance(arg, Null):
        return null
    if isinstance(arg, Scalar):
        return arg.numpy()
    raise TypeError(f"not a kernel argument: {arg!r}")


@dataclass(frozen=True)
class Gemm:
    call: GemmCall


@dataclass(frozen=True)
class Launch:
    kernel: str
    geometry: launch.Geometry
    args: tuple[Arg, ...]


Op = Gemm | Launch


# -- buffers ---------------------------------------------------------------------------------

# Tensors addressed as one: the packed heads (see flat_layout.GROUPS).
PACKED = {
    "heads.weight": ("enc.mu.weight", "enc.logvar.weight"),
    "heads.bias": ("enc.mu.bias", "enc.logvar.bias"),
}


def tensor_views(layout: Layout) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Every tensor the step addresses: name -> (offset in the flat buffer, shape)."""
    views = {name: (layout.offsets[name], layout.shapes[name]) for name in layout.shapes}
    for packed, (first, second) in PACKED.items():
        rows = layout.shapes[first][0] + layout.shapes[second][0]
        if layout.offsets[second] != layout.offsets[first] + int(np.prod(layout.shapes[first])):
            raise AssertionError(f"{first} and {second} are not adjacent in the layout")
        views[packed] = (layout.offsets[first], (rows, *layout.shapes[first][1:]))
    return views


def parameter_buffers(layout: Layout, params, grads) -> dict:
    """The ``p:`` and ``g:`` buffers: views of each tensor in the flat parameter and gradient
    buffers (NumPy or CuPy arrays alike)."""
    views = {}
    for name, (offset, shape) in tensor_views(layout).items():
        size = int(np.prod(shape))
        views[f"p:{name}"] = params[offset : offset + size].reshape(shape)
        views[f"g:{name}"] = grads[offset : offset + size].reshape(shape)
    return views


def _activation_shapes(config: VAEConfig, batch: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The step's per-batch-size buffers but the column sums' scratch: name -> (shape, dtype).
    Each is checked against the kernels' 32-bit indices."""
    d, h, z, b = config.input_dim, config.hidden_dim, config.latent_dim, batch
    f = np.float32
    shapes = {
        "indices": ((b,), np.int64),
        "xb": ((b, d), f),
        "h": ((b, h), f),
        "heads": ((b, 2 * z), f),
        "eps": ((b, z), f),
        "std": ((b, z), f),
        "z": ((b, z), f),
        "dech": ((b, h), f),
        "logits": ((b, d), f),
        "dlogits": ((b, d), f),
        "d_dech": ((b, h), f),
        "dz": ((b, z), f),
        "dheads": ((b, 2 * z), f),
        "dh": ((b, h), f),
        "bce": ((b,), f),
        "kl": ((b,), f),
        "loss": ((3,), np.float64),
        "adam_corrections": ((2,), f),  # this step's -lr / (1 - beta1^t), sqrt(1 - beta2^t)
    }
    for name, (shape, _) in shapes.items():
        launch.check_32bit_indices(f"batch {b}: buffer {name}", shape)
    return shapes


def bias_sum_widths(config: VAEConfig) -> tuple[int, ...]:
    """The widths of the column sums ``backward_ops`` launches (the bias gradients): the
    output layer's, the hidden layers', the packed heads'."""
    return config.input_dim, config.hidden_dim, 2 * config.latent_dim


def column_partials_size(config: VAEConfig, batch: int, multiprocessors: int) -> int:
    """Floats of the scratch buffer the column sums split into row chunks write their
    per-chunk sums to (one sum at a time: each is added up before the next starts), or 0
    where no column sum of this batch size is split."""
    return max(
        (
            chunks * cols
            for cols in bias_sum_widths(config)
            if (chunks := launch.column_chunks(batch, cols, multiprocessors)) > 1
        ),
        default=0,
    )


def workspace_shapes(
    config: VAEConfig, batch: int, multiprocessors: int
) -> dict[str, tuple[tuple[int, ...], type]]:
    """Per-batch-size scratch buffers: name -> (shape, dtype). ``multiprocessors`` (the
    device's) decides how the column sums split the batch, and so their scratch buffer."""
    shapes = _activation_shapes(config, batch)
    partials = column_partials_size(config, batch, multiprocessors)
    if partials:
        launch.check_32bit_indices(f"batch {batch}: buffer column_partials", (partials,))
        shapes["column_partials"] = ((partials,), np.float32)
    return shapes


def buffer_shapes(config: VAEConfig, layout: Layout, batch: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the buffers a GEMM of a program of this batch size may name."""
    shapes = {name: shape for name, (shape, _) in _activation_shapes(config, batch).items()}
    for name, (_, shape) in tensor_views(layout).items():
        shapes[f"p:{name}"] = shape
        shapes[f"g:{name}"] = shape
    return shapes


# -- programs --------------------------------------------------------------------------------


class _Builder:
    def __init__(self, config: VAEConfig, layout: Layout, batch: int):
        self.config, self.layout, self.batch = config, layout, batch
        self.shapes = buffer_shapes(config, layout, batch)
        self.ops: list[Op] = []

    def gemm(self, out: str, a: str, b: str, *, trans_a=False, trans_b=False) -> None:
        self.ops.append(Gemm(plan_gemm(out, a, b, self.shapes, trans_a=trans_a, trans_b=trans_b)))

    def launch(self, kernel: str, geometry: launch.Geometry, *args: Arg) -> None:
        self.ops.append(Launch(kernel, geometry, tuple(args)))

    def column_sum(
        self, kernel: str, inputs: tuple[Arg, ...], out: str, cols: int, multiprocessors: int
    ) -> None:
        """``kernel`` (column_sum, relu_backward_bias_grad) summing the batch's rows into
        ``out``: in one pass, or, split into row chunks, into ``column_partials`` and then
        added in chunk order by column_sum_chunks."""
        b = self.batch
        geometry = launch.column_tiles(b, cols, multiprocessors)
        chunks = geometry.grid[1]
        if chunks == 1:
            self.launch(kernel, geometry, *inputs, Buf(out), i32(b), i32(cols))
            return
        if chunks * cols > column_partials_size(self.config, b, multiprocessors):
            raise AssertionError(
                f"a column sum of {chunks} x {cols} partial sums: "
                f"column_partials_size sizes no scratch buffer for it"
            )
        self.launch(kernel, geometry, *inputs, Buf("column_partials"), i32(b), i32(cols))
        self.launch(
            "column_sum_chunks",
            launch.elementwise(cols),
            Buf("column_partials"),
            Buf(out),
            i32(chunks),
            i32(cols),
        )


def forward_ops(
    config: VAEConfig, layout: Layout, batch: int, *, generate_noise: bool = False
) -> list[Op]:
    """Encoder, reparameterization + KL, decoder, and the fused sigmoid-BCE (which also leaves
    d loss / d logits in ``dlogits``), from the images in ``xb``. With ``generate_noise`` the
    noise is drawn on the device (Philox keyed by the seed and the device step counter) and
    written to ``eps``; otherwise ``eps`` must hold it."""
    q = _Builder(config, layout, batch)
    b, d, h, z = batch, config.input_dim, config.hidden_dim, config.latent_dim
    q.gemm("h", "xb", "p:enc.fc1.weight", trans_b=True)
    q.launch(
        "bias_relu", launch.elementwise(b * h), Buf("h"), Buf("p:enc.fc1.bias"), i32(b), i32(h)
    )
    q.gemm("heads", "h", "p:heads.weight", trans_b=True)
    q.launch(
        "reparameterize_kl",
        launch.one_thread_per_row(b),
        Buf("heads"),
        Buf("p:heads.bias"),
        Buf("eps"),
        i32(1 if generate_noise else 0),
        u64(config.seed),
        Buf("step") if generate_noise else Null(),
        Buf("z"),
        Buf("std"),
        Buf("kl"),
        i32(b),
        i32(z),
    )
    q.gemm("dech", "z", "p:dec.fc1.weight", trans_b=True)
    q.launch(
        "bias_relu", launch.elementwise(b * h), Buf("dech"), Buf("p:dec.fc1.bias"), i32(b), i32(h)
    )
    q.gemm("logits", "dech", "p:dec.out.weight", trans_b=True)
    q.launch(
        "sigmoid_bce",
        launch.one_block_per_row(b),
        Buf("logits"),
        Buf("p:dec.out.bias"),
        Buf("xb"),
        f32(1.0 / b),
        Buf("dlogits"),
        Buf("bce"),
        i32(d),
    )
    return q.ops


def backward_ops(
    config: VAEConfig, layout: Layout, batch: int, *, multiprocessors: int
) -> list[Op]:
    """Every parameter gradient of the batch-mean loss into the flat gradient buffer, after
    ``forward_ops`` (it reads the forward's intermediates and ``dlogits``). The bias
    gradients' column sums split the batch into row chunks to fill the device
    (``multiprocessors``, the device's: launch.column_chunks)."""
    q = _Builder(config, layout, batch)
    b, d, h, z = batch, config.input_dim, config.hidden_dim, config.latent_dim
    mp = multiprocessors
    q.gemm("g:dec.out.weight", "dlogits", "dech", trans_a=True)
    q.column_sum("column_sum", (Buf("dlogits"),), "g:dec.out.bias", d, mp)
    q.gemm("d_dech", "dlogits", "p:dec.out.weight")
    q.column_sum("relu_backward_bias_grad", (Buf("d_dech"), Buf("dech")), "g:dec.fc1.bias", h, mp)
    q.gemm("g:dec.fc1.weight", "d_dech", "z", trans_a=True)
    q.gemm("dz", "d_dech", "p:dec.fc1.weight")
    q.launch(
        "reparameterize_kl_backward",
        launch.elementwise(b * z),
        Buf("heads"),
        Buf("eps"),
        Buf("std"),
        Buf("dz"),
        f32(config.beta / b),
        Buf("dheads"),
        i32(b),
        i32(z),
    )
    q.gemm("g:heads.weight", "dheads", "h", trans_a=True)
    q.column_sum("column_sum", (Buf("dheads"),), "g:heads.bias", 2 * z, mp)
    q.gemm("dh", "dheads", "p:heads.weight")
    q.column_sum("relu_backward_bias_grad", (Buf("dh"), Buf("h")), "g:enc.fc1.bias", h, mp)
    q.gemm("g:enc.fc1.weight", "dh", "xb", trans_a=True)
    return q.ops


def adam_ops(config: VAEConfig, layout: Layout, multiprocessors: int) -> list[Launch]:
    """Adam over the whole flat buffer (padding included: its gradient is always zero): the
    step's bias corrections by one thread, then the update on a grid sized to the device
    (``multiprocessors``), four parameters per iteration."""
    launch.check_32bit_indices("the flat parameter buffer", (layout.size,))
    beta1, beta2 = ADAM_BETAS
    return [
        Launch(
            "adam_bias_corrections",
            launch.single_thread(),
            (Buf("step"), f64(config.lr), f64(beta1), f64(beta2), Buf("adam_corrections")),
        ),
        Launch(
            "adam",
            launch.across_the_device(-(-layout.size // 4), multiprocessors),
            (
                Buf("params"),
                Buf("grads"),
                Buf("m"),
                Buf("v"),
                i32(layout.size),
                f32(1.0 - beta1),
                f32(beta2),
                f32(1.0 - beta2),
                f32(ADAM_EPS),
                Buf("adam_corrections"),
            ),
        ),
    ]


def train_step_ops(
    config: VAEConfig,
    layout: Layout,
    batch: int,
    *,
    generate_noise: bool,
    multiprocessors: int,
    epoch_stride: int | None = None,
) -> list[Op]:
    """The whole step: gather the batch (advancing the step counter), forward, backward, Adam,
    and the batch's mean loss terms. Everything that changes from step to step (indices, the
    step number, noise) is read from device memory, so one capture replays.

    By default the batch's indices are ``indices`` and the losses go to ``loss``. With
    ``epoch_stride`` (the epoch's full batch size) the step takes batch ``*cursor`` of the
    device-side permutation ``order`` and writes its losses to row ``*cursor`` of ``history``,
    then advances ``cursor``: a whole epoch is the same graph replayed, with no copy between
    steps. ``multiprocessors`` (the device's) sizes Adam's grid and the column sums' split."""
    d = config.input_dim
    _activation_shapes(config, batch)  # refuses a batch beyond 32-bit indices, naming a buffer
    if epoch_stride is None:
        indices, cursor, stride, losses = Buf("indices"), Null(), 0, Buf("loss")
    else:
        indices, cursor, stride, losses = Buf("order"), Buf("cursor"), epoch_stride, Buf("history")
    gather = Launch(
        "gather_rows",
        launch.elementwise(batch * d),
        (Buf("data"), indices, cursor, i32(stride), Buf("xb"), i32(batch), i32(d), Buf("step")),
    )
    batch_loss = Launch(
        "batch_loss",
        launch.single_block(),
        (
            Buf("bce"),
            Buf("kl"),
            i32(batch),
            f64(config.beta),
            losses,
            Buf("cursor") if epoch_stride is not None else Null(),
        ),
    )
    return [
        gather,
        *forward_ops(config, layout, batch, generate_noise=generate_noise),
        *backward_ops(config, layout, batch, multiprocessors=multiprocessors),
        *adam_ops(config, layout, multiprocessors),
        batch_loss,
    ]


def gemm_calls(ops: list[Op]) -> list[GemmCall]:
    return [op.call for op in ops if isinstance(op, Gemm)]


def launches(ops: list[Op]) -> list[Launch]:
    return [op for op in ops if isinstance(op, Launch)]
