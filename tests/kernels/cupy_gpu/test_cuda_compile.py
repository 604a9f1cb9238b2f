"""The CUDA compile check (tests/gpu_verification/nvcc_check.py): its command line, and, where nvcc
is installed, that the kernels compile for sm_80 and sm_90 and that a broken kernel fails."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gpu_verification.nvcc_check import REPO_ROOT, check, find_sources, main, nvcc_command

from kernels.cupy_gpu.launch import (
    COMPILE_OPTIONS,
    KERNEL_SOURCE,
    SOURCE_DIR,
    kernel_signatures,
    kernel_source,
)

ARCHS = ("sm_80", "sm_90")
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed (CUDA toolkit)")


def declared_kernels(source: Path) -> list[str]:
    return list(kernel_signatures(source.read_text()))


def test_command_has_both_gencodes_the_launch_options_and_werror(tmp_path):
    command = nvcc_command(KERNEL_SOURCE, ARCHS, tmp_path / "k.o")
    joined = " ".join(command)
    assert "-gencode arch=compute_80,code=sm_80" in joined
    assert "-gencode arch=compute_90,code=sm_90" in joined
    for option in COMPILE_OPTIONS:
        assert option in command
    assert any(option.startswith("-D") for option in COMPILE_OPTIONS)
    assert "-ftz=true" in command  # what CuPy adds: the check compiles what runs
    assert "-Werror all-warnings" in joined
    assert "--resource-usage" in command
    assert command[-4:] == ["-c", "-o", str(tmp_path / "k.o"), str(KERNEL_SOURCE)]


def test_command_rejects_a_malformed_architecture():
    with pytest.raises(ValueError, match="sm_80"):
        nvcc_command(KERNEL_SOURCE, ("80",))


def test_find_sources_finds_the_cupy_kernels():
    sources = find_sources(REPO_ROOT)
    assert KERNEL_SOURCE in sources
    assert sources == sorted(sources)
    assert all(source.suffix == ".cu" for source in sources)


def test_missing_nvcc_is_an_error_unless_allowed(capsys):
    assert main(["--nvcc", "/nonexistent/nvcc"]) == 2
    assert main(["--nvcc", "/nonexistent/nvcc", "--allow-missing"]) == 0
    assert "nvcc not found" in capsys.readouterr().out


@needs_nvcc
def test_every_source_compiles_and_ptxas_reports_every_kernel():
    sources = find_sources(REPO_ROOT)
    for result in check(sources, NVCC, ARCHS):
        assert result.returncode == 0, result.output
        expected = declared_kernels(result.source)
        assert expected, f'no extern "C" __global__ kernels parsed in {result.source}'
        reported = result.kernels()
        for arch in ARCHS:
            missing = set(expected) - set(reported.get(arch, {}))
            assert not missing, f"{arch}: ptxas did not compile {sorted(missing)}"


@needs_nvcc
def test_a_type_error_in_a_kernel_fails_the_check(tmp_path, capsys):
    broken = tmp_path / KERNEL_SOURCE.name
    shutil.copy(SOURCE_DIR / "device_math.cuh", tmp_path)
    broken.write_text(
        KERNEL_SOURCE.read_text()
        + '\nextern "C" __global__ void broken(float* out) { int* p = out; }\n'
    )

    [result] = check([broken], NVCC, ARCHS)
    assert result.returncode != 0
    assert "error" in result.output
    assert 'a value of type "float *" cannot be used to initialize' in result.output

    assert main(["--nvcc", NVCC, str(broken)]) == 1
    assert "FAIL" in capsys.readouterr().out


@needs_nvcc
def test_compiling_without_the_launch_defines_hits_the_error_directive(tmp_path):
    # The check's own command minus the -D options: the source must refuse to build.
    command = [
        option
        for option in nvcc_command(KERNEL_SOURCE, ARCHS, tmp_path / "k.o", NVCC)
        if not option.startswith("-D")
    ]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert "compile with the launcher's -D options" in done.stdout + done.stderr


# -- NVRTC: the runtime compile, without a GPU ---------------------------------------------


def _nvrtc_or_skip():
    from gpu_verification.nvrtc_check import find_nvrtc

    library = find_nvrtc()
    if library is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    return library


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_the_runtime_source_cleanly(arch):
    """The exact text and options CuPy's RawModule compiles on a GPU machine: no error, no
    warning, and a PTX entry for every kernel the launcher knows."""
    from gpu_verification.nvrtc_check import compile_with_nvrtc

    result = compile_with_nvrtc(_nvrtc_or_skip(), arch)
    assert result.ok, result.log
    assert result.log == "", result.log
    entries = set(re.findall(r"\.entry\s+(\w+)", result.ptx))
    assert entries == set(kernel_signatures(kernel_source()))


def test_the_runtime_compile_flushes_denormals_as_cupys_does():
    """CuPy compiles every kernel with -ftz=true: float32 arithmetic in the PTX is .ftz."""
    from gpu_verification.nvrtc_check import compile_with_nvrtc

    ptx = compile_with_nvrtc(_nvrtc_or_skip(), "compute_90").ptx
    flushing = re.findall(r"\b(?:add|sub|mul|fma\.rn|div\.rn|sqrt\.rn)\.ftz\.f32\b", ptx)
    plain = re.findall(r"\b(?:add|sub|mul|fma\.rn|div\.rn|sqrt\.rn)\.f32\b", ptx)
    assert flushing and not plain, f"{len(flushing)} flushing, {len(plain)} plain f32 ops"


def test_adams_update_does_no_double_precision_work():
    """The bias corrections are computed once per step by adam_bias_corrections; the update,
    one thread per four parameters, must not compute them again in double."""
    from gpu_verification.nvrtc_check import compile_with_nvrtc

    ptx = compile_with_nvrtc(_nvrtc_or_skip(), "compute_90").ptx
    bodies = dict(re.findall(r"\.entry\s+(\w+)\((.*?)(?=\.entry|\Z)", ptx, re.DOTALL))
    double = re.compile(r"\.f64\b")  # a double type or instruction (not register %f64)
    assert not double.search(bodies["adam"])
    assert "ld.global.v4.f32" in bodies["adam"]  # the 16-byte loads
    assert double.search(bodies["adam_bias_corrections"])  # the corrections, in double


def test_no_kernel_divides_in_64_bits():
    """The grid-stride kernels divide each element's index by a row length: in 64 bits that is
    a long emulation routine (PTX div/rem .s64/.u64, behind a run-time test for small
    operands), in 32 bits a short inline sequence. The launcher keeps buffers below 2^31
    elements so that every kernel can use 32-bit indices."""
    from gpu_verification.nvrtc_check import compile_with_nvrtc

    ptx = compile_with_nvrtc(_nvrtc_or_skip(), "compute_90").ptx
    bodies = dict(re.findall(r"\.entry\s+(\w+)\((.*?)(?=\.entry|\Z)", ptx, re.DOTALL))
    assert set(bodies) == set(kernel_signatures(kernel_source()))
    wide = {
        name: sorted(set(re.findall(r"\b(?:div|rem)\.[su]64\b", body)))
        for name, body in bodies.items()
    }
    assert not {name: ops for name, ops in wide.items() if ops}
    narrow = {name for name, body in bodies.items() if re.search(r"\b(?:div|rem)\.u32\b", body)}
    assert {"gather_rows", "bias_relu", "reparameterize_kl_backward"} <= narrow


def test_nvrtc_reports_an_error_in_the_source():
    from gpu_verification.nvrtc_check import compile_with_nvrtc

    broken = kernel_source().replace("float v = a[i] + bias[i % width];", "float v = a[i] + ;")
    result = compile_with_nvrtc(_nvrtc_or_skip(), "compute_80", broken)
    assert not result.ok and "expected an expression" in result.log
