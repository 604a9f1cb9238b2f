"""Compile the kernels exactly as the backend does at run time — the same source text (the
header pasted in), the same options with those CuPy adds (``NVRTC_OPTIONS``), NVRTC — on a
machine without a GPU. NVRTC needs no
device: its library alone (the ``nvidia-cuda-nvrtc`` wheel, or a CUDA toolkit's) compiles to
PTX, so the test suite checks what nvcc's compile of the files on disk cannot: that the
runtime source is self-contained and NVRTC accepts it without a warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from kernels.cupy_gpu.launch import NVRTC_OPTIONS, kernel_source


def find_nvrtc() -> Path | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel, $CUDA_HOME, or the loader's path."""
    candidates = []
    try:
        import nvidia  # the namespace package of NVIDIA's CUDA wheels

        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for home in filter(None, (os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        candidates += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    candidates += [found] if found else []
    for candidate in candidates:
        if "builtins" not in os.path.basename(candidate):
            return Path(candidate)
    return None


@dataclass
class NvrtcResult:
    arch: str
    status: int  # nvrtcResult: 0 is success
    log: str
    ptx: str

    @property
    def ok(self) -> bool:
        return self.status == 0


def compile_with_nvrtc(library: Path, arch: str, source: str | None = None) -> NvrtcResult:
    """Compile ``source`` (default: the runtime kernel source) to PTX for ``arch``
    ("compute_80") with the options it gets on a GPU. (CuPy asks for a cubin of the device's
    sm_XX; PTX of compute_XX lists every entry, and the options are the same.)"""
    lib = ctypes.CDLL(str(library))
    text = (source if source is not None else kernel_source()).encode()
    program = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(program), text, b"vae_kernels.cu", 0, None, None)
    if status != 0:
        return NvrtcResult(arch, status, "nvrtcCreateProgram failed", "")
    try:
        options = [o.encode() for o in NVRTC_OPTIONS] + [f"--gpu-architecture={arch}".encode()]
        status = lib.nvrtcCompileProgram(
            program, len(options), (ctypes.c_char_p * len(options))(*options)
        )
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        ptx = ""
        if status == 0:
            lib.nvrtcGetPTXSize(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(program, buffer)
            ptx = buffer.value.decode()
        return NvrtcResult(arch, status, log.value.decode(errors="replace").strip(), ptx)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
