"""The Numba backend's on-disk cache misses when any of its kernels' sources changes, not
only the file of the cached function (Numba's own key)."""

import shutil

import pytest

pytest.importorskip("numba")

from kernels.numba_cpu import compile_cache  # noqa: E402


def test_an_edit_to_an_inlined_kernel_moves_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    package = tmp_path / "numba_cpu"
    shutil.copytree(compile_cache.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = compile_cache.cache_directory(package)
    fused = package / "fused.py"  # inlined into step.py's cached functions, not cached itself
    fused.write_text(fused.read_text() + "\n# an edit\n")
    after = compile_cache.cache_directory(package)
    assert before != after
    assert before.parent == after.parent == package / "__pycache__"


def test_the_user_cache_directory_is_kept_as_the_base(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert compile_cache.cache_directory().parent == tmp_path


def test_the_compiled_step_caches_under_the_keyed_directory():
    from kernels.numba_cpu import bf16, step

    expected = str(compile_cache.cache_directory())
    for dispatcher in (step.train_step, step.forward, bf16.round_into):
        assert dispatcher._cache._cache_path.startswith(expected), dispatcher


def test_the_cache_filled_ahead_of_a_parallel_session_is_filled():
    """tests/conftest.py fills the cache through this very child before pytest-xdist's workers
    start. Started in tests/ with nothing on its path (as it was), its imports failed, each worker
    compiled the pooled step cold, and CI took four minutes longer without a failure."""
    import subprocess

    from checkout import TESTS
    from cpu_verification.numba_cache import child

    spec = child(("serial",))
    done = subprocess.run(**spec, capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout.startswith("numba serial: ready in ")) == (0, True), (
        done.stdout + done.stderr
    )
    spec.update(cwd=TESTS, env={k: v for k, v in spec["env"].items() if k != "PYTHONPATH"})
    where_it_was = subprocess.run(**spec, capture_output=True, text=True, timeout=600)
    assert where_it_was.returncode != 0 and "ImportError" in where_it_was.stderr
