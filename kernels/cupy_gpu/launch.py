"""What the fused kernels are compiled from and with, and how each is launched: the source
text NVRTC gets (``kernel_source``) and the kernels it defines (``kernel_signatures``, parsed
from their ``extern "C"`` declarations: the .cu file is the one list of kernels), the
compile-time constants and options, and the launch geometry. Pure Python (no CuPy), so every
grid is unit-tested on the CPU.

The block sizes below are passed to the compiler as ``-D`` options (``COMPILE_DEFINES``): the
kernels' shared-memory arrays and reduction loops are sized by the same numbers the launcher
uses, and a kernel compiled without them refuses to build.
"""

from __future__ import annotations

import re
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = SOURCE_DIR / "vae_kernels.cu"

ROW_THREADS = 256  # sigmoid_bce: threads per image row; a power of two (tree reduction)
COL_TILE = 32  # column sums: columns per block, one warp wide (coalesced row reads)
ROW_GROUPS = 32  # column sums: rows summed in parallel per column (blockDim.y)
# Column sums: a row chunk (gridDim.y) has at least this many rows, four per thread. Below it
# a split would cost a second launch (column_sum_chunks) to save a few rows per thread: batch
# 128, where the step is bound by launch latency, stays one pass.
MIN_CHUNK_ROWS = 4 * ROW_GROUPS
# Column sums: blocks wanted per multiprocessor when the batch is split into row chunks. An SM
# of sm_80 or sm_90 holds 2,048 threads: two blocks of COL_TILE x ROW_GROUPS.
COLUMN_BLOCKS_PER_MULTIPROCESSOR = 2
LOSS_THREADS = 256  # batch_loss: threads of its single block; a power of two
ELEMENTWISE_THREADS = 256  # grid-stride kernels
ROW_KERNEL_THREADS = 128  # one-thread-per-row kernels (reparameterize_kl)
MAX_ELEMENTWISE_BLOCKS = 132 * 16  # enough to fill an H100 (132 SMs); loops stride beyond
# Blocks per multiprocessor for kernels sized to the device (Adam). ptxas gives Adam 40
# registers a thread (nvcc_check, sm_80 and sm_90): 6 blocks of 256 fit an SM's 64K registers,
# so 4 are one wave with room; 1,024 threads an SM, each with four 16-byte loads in flight,
# should keep HBM busy (an estimate: the first GPU run measures it).
BLOCKS_PER_MULTIPROCESSOR = 4

COMPILE_DEFINES = {
    "ROW_THREADS": ROW_THREADS,
    "COL_TILE": COL_TILE,
    "ROW_GROUPS": ROW_GROUPS,
    "LOSS_THREADS": LOSS_THREADS,
}
# What the backend hands CuPy's RawModule.
COMPILE_OPTIONS = (
    "-std=c++17",
    f"-I{SOURCE_DIR}",
    *(f"-D{name}={value}" for name, value in COMPILE_DEFINES.items()),
)

# What CuPy adds to every RawModule compile besides include paths and the target architecture,
# in 13.6 and 14.2 alike (tests/kernels/cupy_gpu/test_cupy_drift.py checks it against the
# installed CuPy):
#   -ftz=true      cupy/cuda/compiler.py, _compile_with_cache_cuda. Single-precision denormal
#                  inputs and results are flushed to zero (nvcc --help: "--ftz=true flushes
#                  denormal values to zero"; it does not touch double). vae_kernels.cu says
#                  where that matters.
#   --device-as-default-execution-space
#                  compiler.py, the NVRTC step (compile_using_nvrtc in 13,
#                  _compile_using_nvrtc_no_warning in 14): an unannotated function is
#                  __device__. NVRTC only; ours are all annotated.
FLUSH_DENORMALS = "-ftz=true"
CUPY_NVRTC_OPTIONS = (FLUSH_DENORMALS, "--device-as-default-execution-space")
# What NVRTC compiles on a GPU, and so what the offline checks compile (nvcc_check.py,
# nvrtc_check.py): nvcc takes the flush, and has no execution-space option.
NVRTC_OPTIONS = (*COMPILE_OPTIONS, *CUPY_NVRTC_OPTIONS)
NVCC_OPTIONS = (*COMPILE_OPTIONS, FLUSH_DENORMALS)


def kernel_source() -> str:
    """vae_kernels.cu with device_math.cuh pasted in place of its #include: CuPy's on-disk
    kernel cache is keyed by the source text, so a change to the header must change it."""
    header = (SOURCE_DIR / "device_math.cuh").read_text()
    source = KERNEL_SOURCE.read_text()
    include = '#include "device_math.cuh"'
    if include not in source:
        raise RuntimeError(f"{KERNEL_SOURCE.name} no longer includes device_math.cuh")
    # '#pragma once' is for files that are included; pasted, it would be a warning.
    return source.replace(include, header.replace("#pragma once", ""))


# A kernel's declaration: its name, and its parameters as written.
KERNEL_DECLARATION = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def kernel_signatures(code: str) -> dict[str, list[tuple[str, str, bool]]]:
    """name -> [(C type without const/__restrict__, parameter name, is a pointer)] of every
    extern "C" kernel in ``code``, in the order they are defined."""
    kernels = {}
    for name, params in KERNEL_DECLARATION.findall(code):
        parsed = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            words = param.replace("*", " * ").replace("const", " ").replace("__restrict__", " ")
            *type_words, pname = words.split()
            parsed.append((" ".join(w for w in type_words if w != "*"), pname, "*" in type_words))
        kernels[name] = parsed
    return kernels


Dim3 = tuple[int, int, int]


class Geometry(tuple):
    """(grid, block), each a 3-tuple, as RawKernel takes them."""

    def __new__(cls, grid: Dim3, block: Dim3):
        return super().__new__(cls, (grid, block))

    @property
    def grid(self) -> Dim3:
        return self[0]

    @property
    def block(self) -> Dim3:
        return self[1]

    @property
    def threads(self) -> int:
        g, b = self
        return g[0] * g[1] * g[2] * b[0] * b[1] * b[2]


def _positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if int(value) != value or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# The kernels index with 32-bit integers (vae_kernels.cu, GRID_STRIDE: a 64-bit division or
# modulo per element is emulated in software on NVIDIA GPUs, a 32-bit one is a short inline
# sequence), so no buffer they index may hold 2^31 elements or more.
MAX_ELEMENTS = 2**31 - 1


def check_32bit_indices(name: str, shape: tuple[int, ...]) -> None:
    """Refuses a buffer ``name`` of ``shape`` too large for the kernels' 32-bit indices."""
    count = 1
    for size in shape:
        count *= int(size)
    if count > MAX_ELEMENTS:
        dims = " x ".join(str(int(size)) for size in shape) + " = " if len(shape) > 1 else ""
        raise ValueError(
            f"{name}: {dims}{count:,} elements, more than the kernels' 32-bit "
            f"indices reach (2^31 - 1 = {MAX_ELEMENTS:,})"
        )


def elementwise(n: int) -> Geometry:
    """Grid-stride kernels over ``n`` elements: one thread per element up to a cap of blocks
    (beyond it each thread loops), never an empty grid. ``n`` below 2^31: 32-bit indices."""
    _positive(n=n)
    check_32bit_indices("elementwise launch", (n,))
    blocks = min(-(-n // ELEMENTWISE_THREADS), MAX_ELEMENTWISE_BLOCKS)
    return Geometry((blocks, 1, 1), (ELEMENTWISE_THREADS, 1, 1))


def across_the_device(items: int, multiprocessors: int) -> Geometry:
    """Grid-stride kernels sized to the device, not to the problem: the same number of blocks
    on every multiprocessor, as many as ``items`` need (one per ELEMENTWISE_THREADS items) up
    to one wave of resident blocks (BLOCKS_PER_MULTIPROCESSOR each); beyond that each thread
    loops. The few blocks past the last item exit at once."""
    _positive(items=items, multiprocessors=multiprocessors)
    needed = -(-items // ELEMENTWISE_THREADS)
    per_multiprocessor = min(-(-needed // multiprocessors), BLOCKS_PER_MULTIPROCESSOR)
    return Geometry((multiprocessors * per_multiprocessor, 1, 1), (ELEMENTWISE_THREADS, 1, 1))


def single_thread() -> Geometry:
    """A kernel whose work is one value (adam_bias_corrections)."""
    return Geometry((1, 1, 1), (1, 1, 1))


def one_thread_per_row(rows: int) -> Geometry:
    _positive(rows=rows)
    return Geometry((-(-rows // ROW_KERNEL_THREADS), 1, 1), (ROW_KERNEL_THREADS, 1, 1))


def one_block_per_row(rows: int) -> Geometry:
    """sigmoid_bce: block r reduces row r; the kernel assumes exactly ROW_THREADS threads."""
    _positive(rows=rows)
    if rows > 2**31 - 1:
        raise ValueError(f"too many rows for one grid dimension: {rows}")
    return Geometry((rows, 1, 1), (ROW_THREADS, 1, 1))


def column_chunks(rows: int, cols: int, multiprocessors: int) -> int:
    """How many row chunks a column sum over (rows, cols) is split into: enough for
    COLUMN_BLOCKS_PER_MULTIPROCESSOR blocks on each multiprocessor, no chunk shorter than
    MIN_CHUNK_ROWS, at least one, none empty. One block per COL_TILE columns alone is 16
    blocks for a 512-wide layer (2 for 2z = 40): at batch 2048 each thread would walk 64 rows
    while most of the device idles."""
    _positive(rows=rows, cols=cols, multiprocessors=multiprocessors)
    tiles = -(-cols // COL_TILE)
    wanted = -(-multiprocessors * COLUMN_BLOCKS_PER_MULTIPROCESSOR // tiles)
    chunks = max(1, min(wanted, rows // MIN_CHUNK_ROWS))
    # As many chunks as chunks of that length take: ceil(rows / chunks) rows each could
    # leave the last chunk empty (25,601 rows in 200 chunks of 129), never with this count.
    return -(-rows // chunk_rows(rows, chunks))


def chunk_rows(rows: int, chunks: int) -> int:
    """Rows in each row chunk of a column sum (the last may have fewer, or none), as the
    kernel computes it from gridDim.y."""
    _positive(rows=rows, chunks=chunks)
    return -(-rows // chunks)


def column_tiles(rows: int, cols: int, multiprocessors: int) -> Geometry:
    """Column sums: grid (column tiles, row chunks), one block per COL_TILE columns of one
    chunk of rows (``column_chunks``), (COL_TILE, ROW_GROUPS) threads each. With more than
    one chunk, each block writes its chunk's sums and ``column_sum_chunks`` adds them."""
    chunks = column_chunks(rows, cols, multiprocessors)
    return Geometry((-(-cols // COL_TILE), chunks, 1), (COL_TILE, ROW_GROUPS, 1))


def single_block() -> Geometry:
    """batch_loss: one block of LOSS_THREADS sums the whole batch in a fixed order."""
    return Geometry((1, 1, 1), (LOSS_THREADS, 1, 1))
