"""One flat, contiguous float32 buffer holding every parameter (and one each for the
gradients and Adam's two moments), so Adam is a single loop over memory.

Tensors are views into it. The mu and logvar heads sit back to back (weights, then biases),
so the two heads are one (2Z, H) GEMM. Each group starts on an aligned boundary: 64 bytes
for the CPU (a cache line, one AVX-512 register), 256 bytes for the GPU (cuBLAS's preferred
alignment). Both fused backends share this layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_ref import VAEConfig
from vae_ref.params import Params, check_params, parameter_shapes

ALIGN = 16  # floats: 64 bytes, one cache line / one AVX-512 register (the default)

# Groups of tensors stored back to back; groups are aligned. The order is the slot order the
# compiled step reads offsets in (see SLOTS).
GROUPS = (
    ("enc.fc1.weight",),
    ("enc.fc1.bias",),
    ("enc.mu.weight", "enc.logvar.weight"),
    ("enc.mu.bias", "enc.logvar.bias"),
    ("dec.fc1.weight",),
    ("dec.fc1.bias",),
    ("dec.out.weight",),
    ("dec.out.bias",),
)
# Offsets the compiled step needs, one per group (the first tensor of each).
SLOTS = tuple(group[0] for group in GROUPS)


@dataclass(frozen=True)
class Layout:
    offsets: dict[str, int]  # start of each tensor in the flat buffer
    shapes: dict[str, tuple[int, ...]]
    size: int  # total floats, padding included
    slot_offsets: np.ndarray  # int64 offsets of SLOTS, passed to compiled code

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        start = self.offsets[name]
        shape = self.shapes[name]
        return flat[start : start + int(np.prod(shape))].reshape(shape)

    def pack(self, params: Params, config: VAEConfig) -> np.ndarray:
        check_params(params, config)
        flat = np.zeros(self.size, dtype=np.float32)
        for name in self.shapes:
            self.view(flat, name)[...] = params[name]
        return flat

    def unpack(self, flat: np.ndarray) -> Params:
        return {name: self.view(flat, name).copy() for name in self.shapes}


def make_layout(config: VAEConfig, align: int = ALIGN) -> Layout:
    """The layout for ``config``, each group starting on a multiple of ``align`` floats."""
    if config.model != "vae":
        raise ValueError("the fused backends implement the VAE (model='vae'), not the AE")
    shapes = parameter_shapes(config)
    offsets, cursor = {}, 0
    for group in GROUPS:
        cursor = -(-cursor // align) * align
        for name in group:
            offsets[name] = cursor
            cursor += int(np.prod(shapes[name]))
    size = -(-cursor // align) * align
    slots = np.array([offsets[name] for name in SLOTS], dtype=np.int64)
    return Layout(offsets=offsets, shapes=shapes, size=size, slot_offsets=slots)
