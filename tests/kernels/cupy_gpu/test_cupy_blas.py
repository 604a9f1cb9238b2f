"""cuBLAS and the CUDA driver through ctypes (kernels/cupy_gpu/blas.py, driver.py): their
error reporting, how the library CuPy loaded is found, and, wherever cuBLAS's header is
installed, that the C prototypes and enum values declared by hand are the header's."""

from __future__ import annotations

import ctypes
import glob
import os
import re
import types
from pathlib import Path

import pytest

from kernels.cupy_gpu import blas, driver
from kernels.cupy_gpu.gemm import plan_gemm


class FailingLibrary:
    """Every function returns ``status``; argtypes may be set, as on a ctypes library."""

    def __init__(self, status: int, failing: str):
        for name in blas._SIGNATURES:
            code = status if name == failing else 0
            function = (lambda code: lambda *args: code)(code)
            setattr(self, name, function)


@pytest.mark.parametrize(
    "failing, status, named",
    [
        (
            "cublasCreate_v2",
            1,
            "cublasCreate failed with cublasStatus_t 1 "
            r"\(CUBLAS_STATUS_NOT_INITIALIZED\)",
        ),
        ("cublasSetStream_v2", 14, r"cublasSetStream failed .*\(CUBLAS_STATUS_INTERNAL_ERROR\)"),
        (
            "cublasSetWorkspace_v2",
            7,
            r"cublasSetWorkspace failed .*\(CUBLAS_STATUS_INVALID_VALUE\)",
        ),
        (
            "cublasGemmEx",
            7,
            r"cublasGemmEx \(m=3, n=2, k=4\) failed .*\(CUBLAS_STATUS_INVALID_VALUE\)",
        ),
        ("cublasGemmEx", 99, "cublasGemmEx .* 99 .*unknown status"),
    ],
)
def test_a_failing_cublas_call_raises_naming_the_call_and_status(failing, status, named):
    with pytest.raises(blas.CublasError, match=named):
        handle = blas.Cublas(0, 0, 0, library=FailingLibrary(status, failing))
        call = plan_gemm("c", "a", "b", {"a": (2, 4), "b": (4, 3), "c": (2, 3)})
        handle.gemm(call, 1, 2, 3, 4, 5, blas.CUBLAS_COMPUTE_32F)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="no /proc here")
def test_a_loaded_library_is_found_by_name():
    path = blas.mapped_library("libc.so") or blas.mapped_library("libc-")
    assert path is not None and Path(path).exists()
    assert blas.mapped_library("libnothing-of-the-sort.so") is None


def cuda_header(name: str) -> Path | None:
    """A CUDA header from $CUDA_HOME, /usr/local/cuda, or NVIDIA's wheels (nvidia-cublas
    ships cublas_api.h; the runtime's library_types.h may come from elsewhere)."""
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    found = [Path(root) / "include" / name for root in roots if root]
    try:
        import nvidia  # the namespace package of NVIDIA's CUDA wheels

        for root in nvidia.__path__:
            found += [Path(p) for p in glob.glob(os.path.join(root, "*", "include", name))]
    except ImportError:
        pass
    return next((path for path in found if path.exists()), None)


HEADER, LIBRARY_TYPES = cuda_header("cublas_api.h"), cuda_header("library_types.h")


@pytest.mark.skipif(
    HEADER is None or LIBRARY_TYPES is None,
    reason="cuBLAS's headers (cublas_api.h, library_types.h) are not installed",
)
def test_prototypes_and_enum_values_match_cublas_api_h():
    text = HEADER.read_text()
    for name, argtypes in blas._SIGNATURES.items():
        match = re.search(rf"\b{name}\s*\(([^)]*)\)", text)
        assert match, f"{name} is not declared in {HEADER}"
        params = [p.strip() for p in match.group(1).split(",")]
        pointers = [
            ("*" in p or p.split()[0] in ("cublasHandle_t", "cudaStream_t")) for p in params
        ]
        ours = [t is ctypes.c_void_p or issubclass(t, ctypes._Pointer) for t in argtypes]
        assert pointers == ours, f"{name}: header {params}, ours {argtypes}"
    for constant in (
        "CUBLAS_COMPUTE_32F",
        "CUBLAS_COMPUTE_32F_FAST_TF32",
        "CUBLAS_GEMM_DEFAULT",
        "CUBLAS_POINTER_MODE_HOST",
    ):
        value = re.search(rf"\b{constant}\s*=\s*(-?\d+)", text)
        assert value and int(value.group(1)) == getattr(blas, constant), constant
    value = re.search(r"\bCUDA_R_32F\s*=\s*(\d+)", LIBRARY_TYPES.read_text())
    assert value and int(value.group(1)) == blas.CUDA_R_32F


def test_a_graph_node_count_reads_the_drivers_answer_or_names_its_error():
    def driver_library(status: int, nodes: int):
        def get_nodes(graph, array, count):  # cuGraphGetNodes; a function takes argtypes
            assert graph == 1234 and array is None
            count._obj.value = nodes
            return status

        return types.SimpleNamespace(cuGraphGetNodes=get_nodes)

    assert driver.graph_node_count(1234, library=driver_library(0, 27)) == 27
    with pytest.raises(driver.DriverError, match="cuGraphGetNodes failed with CUresult 400"):
        driver.graph_node_count(1234, library=driver_library(400, 0))
