"""Shared test set-up.

Without a CUDA device the Triton kernels run under the interpreter (``TRITON_INTERPRET=1``).
Triton reads that variable when it is first imported, and diffusers/torch import triton as a
side effect, so it must be set here, before any test module is collected."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _patch_language_once_per_launch():
    """Under the interpreter, every call of a ``@triton.jit`` helper inside a kernel re-patches
    ``triton.language`` (``inspect.getmembers`` over ``tl``, ``tl.tensor``, ``tl.math``, ``tl.core``:
    a fifth of a memory kernel test's time), though the launch around it already patched the same
    modules and restores them when it ends. Skip that repeat when the helper sees no language module
    the launch did not patch; a helper called outside a launch, or seeing another module, takes
    triton's own path. The patched functions are the same either way, so the kernels compute the same."""
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # pragma: no cover - triton missing
        return
    executor, function = getattr(interp, "GridExecutor", None), getattr(interp, "InterpretedFunction", None)
    if executor is None or function is None or getattr(function.__call__, "_vidhash_patched", False):
        return
    tl = interp.tl
    launches = []  # per launch in progress: ids of the language modules it patched

    def langs(fn):
        return frozenset(id(v) for v in list(fn.__globals__.values()) if v is tl or v is tl.core)

    launch_call, helper_call = executor.__call__, function.__call__

    def launch(self, *args, **kwargs):
        launches.append(langs(self.fn))
        try:
            return launch_call(self, *args, **kwargs)
        finally:
            launches.pop()

    def helper(self, *args, **kwargs):
        if not launches or not langs(self.fn) <= launches[-1]:
            return helper_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e

    helper._vidhash_patched = True
    executor.__call__, function.__call__ = launch, helper


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_language_once_per_launch()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models run many times faster than on two threads of a
    shared 2-core machine (no spinning), and results do not depend on the thread count. Folders of
    tiny-model tests (integrations, training, wan) use it for every test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
