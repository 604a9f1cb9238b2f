"""The CUDA driver API through ctypes, for what CuPy does not expose: how many nodes a captured
graph holds. cuBLAS may launch more than one kernel for a GEMM (a split-K reduction, say), so
a step's graph can hold more nodes than the step program has launches, and the floor set by
launch latency is counted in nodes."""

from __future__ import annotations

import ctypes


class DriverError(RuntimeError):
    """A driver call that failed, or a driver library that could not be opened."""


def open_driver() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")  # the driver every CUDA process has loaded
    except OSError as error:
        raise DriverError(f"cannot open the CUDA driver library libcuda.so.1: {error}") from None


def graph_node_count(graph_handle: int, library=None) -> int:
    """Nodes in the CUDA graph ``graph_handle`` (a cudaGraph_t / CUgraph)."""
    lib = library if library is not None else open_driver()
    get_nodes = lib.cuGraphGetNodes
    get_nodes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    get_nodes.restype = ctypes.c_int
    count = ctypes.c_size_t(0)
    status = get_nodes(graph_handle, None, ctypes.byref(count))  # null array: count only
    if status != 0:
        raise DriverError(f"cuGraphGetNodes failed with CUresult {status}")
    return count.value
