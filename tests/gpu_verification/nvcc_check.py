"""Compile-check every CUDA source with nvcc, so CI catches syntax and type errors in kernels
that no test can run without a GPU.

    python -m tests.gpu_verification.nvcc_check [--nvcc PATH] [--arch sm_80 --arch sm_90]
                                                [--allow-missing] [SOURCE ...]

(from the repository root; ``python tests/gpu_verification/nvcc_check.py`` works too: this
module imports nothing from its package.)

Each source is compiled for every architecture with the options NVRTC gets at run time
(``NVCC_OPTIONS`` in kernels/cupy_gpu/launch.py: the launcher's, and CuPy's -ftz=true), warnings as errors, and
ptxas's resource report (registers, shared memory per kernel) printed. Objects go to a temporary directory.
Exit status: 0 all compiled, 1 a source failed (or none found), 2 nvcc not found (0 with
``--allow-missing``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kernels.cupy_gpu.launch import NVCC_OPTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARCHS = ("sm_80", "sm_90")  # A100, H100

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_REGISTERS = re.compile(r"Used (\d+) registers")


def find_sources(root: Path) -> list[Path]:
    """Every ``.cu`` file under ``root/kernels``, sorted."""
    return sorted((Path(root) / "kernels").rglob("*.cu"))


def _checked_arch(arch: str) -> str:
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ValueError(f"architecture must look like sm_80, got {arch!r}")
    return arch


def _arch_option(text: str) -> str:
    try:
        return _checked_arch(text)
    except ValueError as error:  # argparse prints this message, not a generic one
        raise argparse.ArgumentTypeError(str(error)) from None


def nvcc_command(
    source: Path | str,
    arch_list=DEFAULT_ARCHS,
    output: Path | str | None = None,
    nvcc: str = "nvcc",
) -> list[str]:
    """The nvcc command line that compiles ``source`` to the object file ``output`` (default:
    no object kept) for every architecture in ``arch_list`` ("sm_80", "sm_90a", ...)."""
    command = [nvcc]
    for arch in arch_list:
        number = _checked_arch(arch).removeprefix("sm_")
        command += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    command += [*NVCC_OPTIONS, "-Werror", "all-warnings", "--resource-usage"]
    # An object, not -cubin: nvcc refuses -cubin with more than one -gencode.
    command += ["-c", "-o", str(output if output is not None else "/dev/null"), str(source)]
    return command


@dataclass
class Result:
    source: Path
    command: list[str]
    returncode: int
    output: str  # nvcc's stdout and stderr, interleaved
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def kernels(self) -> dict[str, dict[str, int | None]]:
        """What ptxas reported: {arch: {kernel: registers}} (registers None if not parsed)."""
        found: dict[str, dict[str, int | None]] = {}
        current = None
        for line in self.output.splitlines():
            if entry := _ENTRY.search(line):
                name, arch = entry.groups()
                found.setdefault(arch, {})[name] = None
                current = (arch, name)
            elif current and (used := _REGISTERS.search(line)):
                found[current[0]][current[1]] = int(used.group(1))
                current = None
        return found

    def summary(self) -> str:
        name = _display(self.source)
        if not self.ok:
            return f"FAIL {name}: nvcc exit status {self.returncode} ({self.seconds:.1f} s)"
        kernels = self.kernels()
        counts = ", ".join(f"{len(names)} on {arch}" for arch, names in kernels.items())
        registers = [
            (regs, kernel, arch)
            for arch, names in kernels.items()
            for kernel, regs in names.items()
            if regs is not None
        ]
        text = f"ok   {name}: kernels {counts or 'none reported'}"
        if registers:
            regs, kernel, arch = max(registers)
            text += f"; max {regs} registers ({kernel}, {arch})"
        return text + f" ({self.seconds:.1f} s)"


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check(sources, nvcc: str = "nvcc", arch_list=DEFAULT_ARCHS) -> list[Result]:
    """Compile each source; the objects are written to, and removed with, a temporary dir."""
    results = []
    with tempfile.TemporaryDirectory(prefix="nvcc_check_") as tmp:
        for i, source in enumerate(sources):
            source = Path(source).resolve()
            output = Path(tmp) / f"{i}_{source.stem}.o"
            command = nvcc_command(source, arch_list, output, nvcc)
            start = time.perf_counter()
            # cwd=tmp: anything nvcc leaves behind goes away with the directory.
            done = subprocess.run(
                command,
                check=False,
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            results.append(
                Result(source, command, done.returncode, done.stdout, time.perf_counter() - start)
            )
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.gpu_verification.nvcc_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "sources", nargs="*", type=Path, help="files to check (default: every .cu under kernels/)"
    )
    parser.add_argument("--nvcc", default="nvcc", help="the nvcc to use (default: on PATH)")
    parser.add_argument(
        "--arch",
        action="append",
        dest="archs",
        metavar="SM",
        type=_arch_option,
        help="target architecture, repeatable (default: sm_80 and sm_90)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 when nvcc is not found (machines without CUDA)",
    )
    args = parser.parse_args(argv)

    sources = args.sources or find_sources(REPO_ROOT)
    if not sources:
        print(f"nvcc_check: no .cu files under {REPO_ROOT / 'kernels'}")
        return 1
    nvcc = shutil.which(args.nvcc)
    if nvcc is None:
        print(
            f"nvcc_check: nvcc not found ({args.nvcc}); CUDA sources not compile-checked "
            "— install the CUDA toolkit or pass --nvcc"
        )
        return 0 if args.allow_missing else 2

    version = subprocess.run([nvcc, "--version"], check=False, capture_output=True, text=True)
    print(version.stdout.strip())
    results = check(sources, nvcc, tuple(args.archs or DEFAULT_ARCHS))
    for result in results:
        print(f"\n$ {shlex.join(result.command)}")
        print(result.output.rstrip() or "(no output)")
    print()
    for result in results:
        print(result.summary())
    failed = sum(not r.ok for r in results)
    print(f"nvcc_check: {len(results) - failed} of {len(results)} CUDA sources compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
