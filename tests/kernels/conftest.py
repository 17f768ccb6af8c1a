"""Kernel tests run the Triton kernels' own code on CPU under ``TRITON_INTERPRET=1`` when no
CUDA device is present (set before triton is imported). On CUDA the attention kernels run their
default config (``VIDHASH_AUTOTUNE=0``) unless a test asks for the autotuner: timing every config at
every new shape took the first 4 tests of the sparse-attention files 230 s on an H100 (2026-12-05);
the tests that check each config of an autotune list set ``VIDHASH_AUTOTUNE=1`` themselves."""
import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _default_configs_on_cuda(monkeypatch):
    """Only for the tests in this folder (a module-level setting would reach every test collected
    after it); a test's own ``monkeypatch.setenv("VIDHASH_AUTOTUNE", "1")`` runs later and wins."""
    if torch.cuda.is_available() and "VIDHASH_AUTOTUNE" not in os.environ:
        monkeypatch.setenv("VIDHASH_AUTOTUNE", "0")


if os.environ.get("TRITON_INTERPRET") == "1":
    from vidhash.kernels.interpreter import patch_for_numpy_2_4  # (importing vidhash applies it too)

    patch_for_numpy_2_4()


# --------------------------------------------------------------------------------------------
# test_sass.py's subprocesses (``python -m vidhash.kernels.sass ...``: ptxas compiles for sm_90, about
# a minute of one core in all). The tests here use one core (the interpreter), so once the session
# has collected test_sass.py they run one after another in a background thread, at low priority (nice)
# on the second core, while the other tests run; a test of test_sass.py waits for its own command's result.
# --------------------------------------------------------------------------------------------
SASS_COMMANDS = {
    "block-score": ["block-score", "--shapes", "131k"],
    "dkdv": ["dkdv"],
    "tma-forward": ["tma-forward"],
    "tma-dkdv": ["tma-dkdv"],
    "pointer-forward": ["pointer-forward"],
    "pointer-dq": ["pointer-dq"],
}
SASS_TIMEOUT_S = 300
LOW_PRIORITY = ["nice", "-n", "19"] if shutil.which("nice") else []  # the tests' own process keeps its core


def _has_ptxas() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("triton")
    return bool(spec and spec.submodule_search_locations) and any(
        os.path.exists(os.path.join(p, "backends", "nvidia", "bin", "ptxas")) for p in spec.submodule_search_locations)


class _SassRuns:
    """The commands of :data:`SASS_COMMANDS`, run one at a time in a daemon thread."""

    def __init__(self):
        import threading

        self._results, self._done = {}, {name: threading.Event() for name in SASS_COMMANDS}
        self._proc, self._stopped = None, False
        threading.Thread(target=self._run_all, daemon=True).start()

    def _run_all(self):
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        for name, args in SASS_COMMANDS.items():
            try:
                if self._stopped:
                    raise RuntimeError("the session ended before this command ran")
                self._proc = subprocess.Popen([*LOW_PRIORITY, sys.executable, "-m", "vidhash.kernels.sass", *args],
                                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                out, err = self._proc.communicate(timeout=SASS_TIMEOUT_S)
                self._results[name] = subprocess.CompletedProcess(self._proc.args, self._proc.returncode, out, err)
            except BaseException as e:  # noqa: BLE001 - handed to the test that waits for it
                if self._proc is not None and self._proc.poll() is None:
                    self._proc.kill()
                    self._proc.wait()
                self._results[name] = e
            finally:
                self._done[name].set()

    def result(self, name: str):
        """The command's ``subprocess.CompletedProcess`` (waits for it)."""
        self._done[name].wait()
        r = self._results[name]
        if isinstance(r, BaseException):
            raise r
        return r

    def stop(self):
        self._stopped = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


_sass_runs: _SassRuns | None = None


def pytest_collection_finish(session):
    global _sass_runs
    if _sass_runs is None and not session.config.option.collectonly and _has_ptxas():
        sass_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_sass.py")
        if any(str(item.path) == sass_file for item in session.items):
            _sass_runs = _SassRuns()


def pytest_sessionfinish(session):
    if _sass_runs is not None:
        _sass_runs.stop()


@pytest.fixture(scope="session")
def sass_run():
    """``sass_run(name)``: the finished ``python -m vidhash.kernels.sass`` run of ``SASS_COMMANDS[name]``."""
    global _sass_runs
    if _sass_runs is None:  # not started at collection (test_sass.py collected some other way)
        _sass_runs = _SassRuns()
    return _sass_runs.result
