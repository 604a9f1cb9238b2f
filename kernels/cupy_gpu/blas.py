"""cuBLAS through ctypes: the GEMMs of a step that is captured into a CUDA Graph.

CuPy's own cuBLAS binding refuses every call while a stream is being captured: its
``setStream``, which each binding calls first, raises NotImplementedError ("calling cuBLAS API
during stream capture is currently unsupported", CuPy 13), although cuBLAS supports capture
(cuBLAS documentation, "CUDA Graphs Support"; with host pointer mode, alpha and beta are
captured by value). So the executor calls the library CuPy has loaded directly: one handle,
its stream, workspace and pointer mode set once, outside any capture. The workspace is ours
(cublasSetWorkspace) so that cuBLAS never allocates while a step is captured: no memory
nodes in the graph, no growth when it is captured again.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from .gemm import GemmCall

# Enum values of cublas_api.h and library_types.h: part of cuBLAS's ABI.
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_POINTER_MODE_HOST = 0
WORKSPACE_BYTES = 32 << 20  # NVIDIA's recommendation for Hopper (4 MiB before it): ample

_HANDLE = ctypes.c_void_p
_SIGNATURES = {
    "cublasCreate_v2": [ctypes.POINTER(_HANDLE)],
    "cublasSetStream_v2": [_HANDLE, ctypes.c_void_p],
    "cublasSetWorkspace_v2": [_HANDLE, ctypes.c_void_p, ctypes.c_size_t],
    "cublasSetPointerMode_v2": [_HANDLE, ctypes.c_int],
    "cublasGemmEx": [
        _HANDLE,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ],
}


class CublasError(RuntimeError):
    """A cuBLAS call that returned an error status, or a library that could not be opened."""


def mapped_library(stem: str) -> str | None:
    """The file of a shared library this process has loaded whose name starts with ``stem``
    (from /proc/self/maps; None where there is no such file or no /proc)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if path.rsplit("/", 1)[-1].startswith(stem):
                    return path
    except OSError:
        pass
    return None


def open_cublas() -> ctypes.CDLL:
    """The cuBLAS library CuPy uses, opened through ctypes (the same loaded copy)."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401 - loads libcublas into the process

    path = mapped_library("libcublas.so") or ctypes.util.find_library("cublas")
    if path is None:
        raise CublasError(
            "CuPy's cuBLAS is loaded, but its library file was found neither in "
            "/proc/self/maps nor by ctypes.util.find_library('cublas')"
        )
    return ctypes.CDLL(path)


class Cublas:
    """One cuBLAS handle on one stream with its own workspace (device memory the caller keeps
    alive, WORKSPACE_BYTES or more), host pointer mode: GEMMs a graph may capture."""

    def __init__(self, stream_ptr: int, workspace_ptr: int, workspace_bytes: int, library=None):
        self.lib = library if library is not None else open_cublas()
        for name, argtypes in _SIGNATURES.items():
            function = getattr(self.lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
        self.handle = _HANDLE()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(self.handle, stream_ptr), "cublasSetStream")
        # After the stream: setting a stream resets the handle to cuBLAS's own workspace.
        self._check(
            self.lib.cublasSetWorkspace_v2(self.handle, workspace_ptr, workspace_bytes),
            "cublasSetWorkspace",
        )
        self._check(
            self.lib.cublasSetPointerMode_v2(self.handle, CUBLAS_POINTER_MODE_HOST),
            "cublasSetPointerMode",
        )

    def gemm(
        self, call: GemmCall, a: int, b: int, c: int, alpha: int, beta: int, compute_type: int
    ) -> None:
        """cublasGemmEx(call) on device pointers ``a``, ``b``, ``c``; ``alpha`` and ``beta``
        are host pointers to float32 scalars."""
        status = self.lib.cublasGemmEx(
            self.handle,
            call.transa,
            call.transb,
            call.m,
            call.n,
            call.k,
            alpha,
            a,
            CUDA_R_32F,
            call.lda,
            b,
            CUDA_R_32F,
            call.ldb,
            beta,
            c,
            CUDA_R_32F,
            call.ldc,
            compute_type,
            CUBLAS_GEMM_DEFAULT,
        )
        self._check(status, f"cublasGemmEx (m={call.m}, n={call.n}, k={call.k})")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise CublasError(
                f"{what} failed with cublasStatus_t {status} "
                f"({_STATUS_NAMES.get(status, 'unknown status')})"
            )


_STATUS_NAMES = {
    1: "CUBLAS_STATUS_NOT_INITIALIZED",
    3: "CUBLAS_STATUS_ALLOC_FAILED",
    7: "CUBLAS_STATUS_INVALID_VALUE",
    8: "CUBLAS_STATUS_ARCH_MISMATCH",
    11: "CUBLAS_STATUS_MAPPING_ERROR",
    13: "CUBLAS_STATUS_EXECUTION_FAILED",
    14: "CUBLAS_STATUS_INTERNAL_ERROR",
    15: "CUBLAS_STATUS_NOT_SUPPORTED",
    16: "CUBLAS_STATUS_LICENSE_ERROR",
}
