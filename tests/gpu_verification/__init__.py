"""How the CuPy backend (kernels/cupy_gpu/) is checked on a machine without a GPU: every tool
that stands in for the GPU, or for CuPy, or compiles the kernels without running them. None of
it is imported by the backend; the tests import it (``from gpu_verification import ...``, with
tests/ on the path as pytest puts it), and the nvcc check also runs on its own.

- ``twins.py``: NumPy twins of each CUDA kernel and of the GEMMs, checking every launch's
  buffer sizes, grid and element types; ``philox.py``: the twin of the device noise generator.
- ``numpy_executor.py``: an executor that runs the backend's step programs through the twins.
- ``cuda_on_host.py`` + ``cuda_on_host.h``: the kernel source itself built for the host, with
  enough of CUDA's execution model (blocks, threads as fibers, barriers) to run it.
- ``fake_cupy.py``: the slice of CuPy the CUDA executor calls, simulated on the host (each
  behaviour citing the CuPy source it mirrors; ``tests/kernels/cupy_gpu/test_cupy_drift.py``
  holds it to the installed CuPy), kernels run as twins or as the host-built source.
- ``nvcc_check.py``: every .cu compiled by nvcc for sm_80 and sm_90, warnings as errors
  (``python -m tests.gpu_verification.nvcc_check``); ``nvrtc_check.py``: the runtime source
  compiled by NVRTC, as CuPy compiles it on a GPU.

kernels/cupy_gpu/README.md says what each shows, and what only a GPU can.
"""
