"""The simulated CuPy (tests/gpu_verification/fake_cupy.py) held to the real one. Wherever CuPy is installed —
no GPU needed: the wheel imports without one — each belief the simulation states is checked
against the installed CuPy's own code. CI installs CuPy 13.6 and 14.2 in turn (``nox -s
drift``) and runs this file with VAE_BENCH_REQUIRE_CUPY=1, so there nothing here may skip.
Beliefs only a GPU can check are listed as unverified in kernels/cupy_gpu/README.md.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import zlib

import pytest
from gpu_verification import fake_cupy

from kernels.cupy_gpu.launch import (
    COMPILE_OPTIONS,
    CUPY_NVRTC_OPTIONS,
    NVRTC_OPTIONS,
    kernel_source,
)

pytestmark = pytest.mark.drift


@pytest.fixture(scope="module")
def cupy():
    if importlib.util.find_spec("cupy") is None:
        if os.environ.get("VAE_BENCH_REQUIRE_CUPY"):
            pytest.fail("VAE_BENCH_REQUIRE_CUPY is set, but CuPy is not installed")
        pytest.skip("CuPy is not installed (nox -s drift installs each supported version)")
    import cupy

    return cupy


def test_the_installed_cupy_is_a_simulated_version(cupy):
    """The simulation models 13.6 and 14.2; a CuPy of another major version needs reading."""
    major = cupy.__version__.split(".")[0]
    assert major in {v.split(".")[0] for v in fake_cupy.SIMULATED_VERSIONS}, cupy.__version__


def _parameter_names(function) -> list[str]:
    """Parameter names, variadic ones left out: from the signature, or for a Cython builtin
    from its docstring, whose head holds Cython's embedded signature and sometimes CuPy's
    written one (where a **kwargs hides the keywords): the one that names the most."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = None
    if parameters is not None:
        return [
            p.name
            for p in parameters
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    candidates = []
    for line in (function.__doc__ or "").strip().splitlines()[:4]:
        if re.match(r"[\w.]+\(.*\)", line.strip()):
            inside = line[line.index("(") + 1 : line.rindex(")")]
            parts = [part.strip() for part in inside.split(",")]
            names = [
                part.split("=")[0].split()[-1]
                for part in parts
                if part and not part.lstrip("\\").startswith("*")
            ]  # *, *a, **k
            candidates.append([name for name in names if name != "self"])
    assert candidates, f"no signature found for {function}"
    return max(candidates, key=len)


def test_every_simulated_call_exists_and_takes_the_real_parameters(cupy):
    """Each CuPy call the simulation stands in for exists in the installed CuPy and takes the
    parameters the simulation takes, in the same order."""
    import cupyx

    runtime = cupy.cuda.runtime
    pairs = {
        cupy.cuda.Stream: fake_cupy.Stream,
        cupy.cuda.Event: fake_cupy.Event,
        cupy.cuda.Stream.begin_capture: fake_cupy.Stream.begin_capture,
        cupy.cuda.Stream.end_capture: fake_cupy.Stream.end_capture,
        cupy.cuda.Stream.synchronize: fake_cupy.Stream.synchronize,
        cupy.cuda.Event.record: fake_cupy.Event.record,
        cupy.ndarray.get: fake_cupy.ndarray.get,
        cupy.ndarray.set: fake_cupy.ndarray.set,
        cupy.cuda.graph.Graph.launch: fake_cupy.Graph.launch,
        cupy.RawModule: fake_cupy.RawModule,
        cupy.RawKernel.__call__: fake_cupy._RawKernel.__call__,
        runtime.memcpyAsync: fake_cupy._memcpy_async,
        runtime.getDeviceProperties: fake_cupy._device_properties,
        runtime.streamBeginCapture: fake_cupy._stream_begin_capture,
        runtime.streamEndCapture: fake_cupy._stream_end_capture,
        runtime.graphInstantiate: fake_cupy._graph_instantiate,
        runtime.graphDestroy: fake_cupy._graph_destroy,
        runtime.graphExecDestroy: fake_cupy._graph_exec_destroy,
        runtime.graphLaunch: fake_cupy._graph_launch,
        cupy.random.default_rng: fake_cupy.Generator,
        cupy.random.Generator.standard_normal: fake_cupy.Generator.standard_normal,
        cupy.cuda.get_elapsed_time: lambda start_event, end_event: None,
        cupyx.empty_pinned: lambda shape, dtype: None,
    }
    for real, simulated in pairs.items():
        ours, theirs = _parameter_names(simulated), _parameter_names(real)
        remaining = iter(theirs)  # ours must appear in theirs, in the same order
        assert all(name in remaining for name in ours), (
            f"{real}: CuPy takes {theirs}, the simulation {ours}"
        )


def test_runtime_constants_and_errors_are_the_simulated_ones(cupy):
    runtime = cupy.cuda.runtime
    for name in ("memcpyHostToDevice", "streamCaptureModeRelaxed"):
        assert getattr(runtime, name) == getattr(fake_cupy.runtime, name), name
    assert issubclass(runtime.CUDARuntimeError, RuntimeError)
    # Graph exposes the handles the simulation gives it (graph.pxd: readonly intptr_t).
    for attribute in ("graph", "graphExec"):
        assert hasattr(cupy.cuda.graph.Graph, attribute), attribute


def test_raw_module_takes_its_options_as_a_tuple_only(cupy):
    """raw.pyx types the parameter: a list is refused, by CuPy and by the simulation alike."""
    source = 'extern "C" __global__ void k() {}'
    cupy.RawModule(code=source, options=("-DX=1",))  # compiles only when a kernel is asked for
    fake_cupy.RawModule(code=source, options=("-DX=1",))
    for module in (cupy.RawModule, fake_cupy.RawModule):
        with pytest.raises(TypeError, match="options"):
            module(code=source, options=["-DX=1"])


def test_cupy_compiles_our_source_with_exactly_the_options_we_check(cupy, monkeypatch):
    """CuPy's compile path (compiler.py, _compile_module_with_cache) run on our source and
    options, NVRTC itself replaced by a recorder and the device's architecture given: what
    reaches NVRTC must be NVRTC_OPTIONS, the options the offline checks compile with, plus
    only include paths and the target architecture."""
    from cupy.cuda import compiler

    received = []

    class Stop(Exception):
        pass

    class RecordingProgram:  # compiler._NVRTCProgram(src, name=..., headers=..., ...)
        def __init__(self, src, *args, **kwargs):
            self.src = src

        def compile(self, options=(), log_stream=None):
            if self.src == "":  # CuPy's preprocessing of an empty file: its version probe
                return b"// NVRTC (recorded)", None
            received.append(tuple(options))
            raise Stop

    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")
    monkeypatch.setattr(compiler, "_NVRTCProgram", RecordingProgram)
    monkeypatch.setattr(compiler, "_get_nvrtc_version", lambda: (13, 0))
    monkeypatch.setattr(
        compiler, "_get_arch_for_options_for_nvrtc", lambda arch=None: (f"-arch=sm_{arch}", "cubin")
    )
    with pytest.raises(Stop):
        compiler._compile_module_with_cache(
            kernel_source(), COMPILE_OPTIONS, arch="90", backend="nvrtc"
        )
    [options] = received
    ours = set(COMPILE_OPTIONS)
    kept = [o for o in options if o != "-arch=sm_90" and (not o.startswith("-I") or o in ours)]
    assert tuple(kept) == NVRTC_OPTIONS, options
    assert set(CUPY_NVRTC_OPTIONS) <= set(options)


def extension_strings(module: str) -> bytes:
    """The bytes of an installed extension module, with its string constants decompressed:
    Cython 3.1 and later (CuPy 14's build) keep them in one zlib stream, older builds (13's)
    as plain bytes. Read from the file, not imported (a library may need a GPU to load)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    with open(spec.origin, "rb") as file:
        raw = file.read()
    found = [raw]
    for header in re.finditer(rb"\x78[\x01\x5e\x9c\xda]", raw):
        try:
            found.append(zlib.decompressobj().decompress(raw[header.start() :]))
        except zlib.error:
            continue
    return b"\0".join(found)


def test_cupys_cublas_binding_refuses_calls_during_capture(cupy):
    """The refusal that made the executor call cuBLAS through ctypes (blas.py) is in the
    installed binding (cublas.pyx setStream), with the simulation's message."""
    try:
        fake_cupy._CAPTURE = []
        with pytest.raises(NotImplementedError) as refused:
            fake_cupy.cublas.gemmEx()
    finally:
        fake_cupy._CAPTURE = None
    message = str(refused.value).encode()
    assert message in extension_strings("cupy_backends.cuda.libs.cublas")


def test_device_properties_name_the_multiprocessor_count(cupy):
    """runtime.pyx getDeviceProperties' dict has the key the executor sizes Adam's grid by."""
    assert b"multiProcessorCount" in extension_strings("cupy_backends.cuda.api.runtime")
    assert "multiProcessorCount" in fake_cupy._device_properties(0)
