"""Shared test set-up.

Without a CUDA device the Triton kernels run under the interpreter (``TRITON_INTERPRET=1``).
Triton reads that variable when it is first imported, and diffusers/torch import triton as a
side effect, so it must be set here, before any test module is collected."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist workers (the GPU runs: scripts/gpu/kernels_check.sh) share the machine's cores: each takes
# its share of torch's CPU threads. With every worker at all 16 cores, the CPU-only CUDA-graph tests
# (emulated replays) passed 120 s on an H100 machine (2026-12-06) that CI runs in seconds.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

import pytest  # noqa: E402


def _patch_language_once_per_launch():
    """Under the interpreter, every call of a ``@triton.jit`` function inside a kernel (a helper,
    or ``tl.sum``, ``tl.zeros``...) patches ``triton.language`` anew (``inspect.getmembers`` over
    ``tl``, ``tl.tensor``, ``tl.math``, ``tl.core``: a fifth of a memory kernel test's time), though
    the launch around it (or an earlier call: triton never restores those) left the same modules
    patched with the same functions. Inside a launch, skip that repeat when every language module
    the function sees is patched already (its ``program_id`` is no longer the builtin); otherwise
    (outside a launch, or a module not patched yet) triton's own path runs. The kernels compute the same."""
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # pragma: no cover - triton missing
        return
    executor, function = getattr(interp, "GridExecutor", None), getattr(interp, "InterpretedFunction", None)
    if (executor is None or function is None or not hasattr(function, "rewrite") or not hasattr(interp, "InterpreterError")
            or getattr(function.__call__, "_vidhash_patched", False)):
        return  # another triton than the one these shortcuts were written against (3.6): its own path
    tl = interp.tl
    launches = [0]  # launches in progress

    def patched(fn):
        langs = [v for v in list(fn.__globals__.values()) if v is tl or v is tl.core]
        return bool(langs) and not any(tl.core.is_builtin(getattr(m, "program_id", None)) for m in langs)

    launch_call, helper_call = executor.__call__, function.__call__

    def launch(self, *args, **kwargs):
        launches[0] += 1
        try:
            return launch_call(self, *args, **kwargs)
        finally:
            launches[0] -= 1

    def helper(self, *args, **kwargs):
        if not launches[0] or not patched(self.fn):
            return helper_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e

    helper._vidhash_patched, helper._triton_call = True, helper_call
    executor.__call__, function.__call__ = launch, helper


_ELEMENTWISE_OPS = {"RESUME", "NOP", "CACHE", "LOAD_FAST", "LOAD_FAST_LOAD_FAST", "LOAD_CONST", "STORE_FAST",
                    "BINARY_OP", "UNARY_NEGATIVE", "UNARY_INVERT", "COMPARE_OP", "BUILD_TUPLE", "RETURN_VALUE",
                    "RETURN_CONST"}


def _branch_free(fn) -> bool:
    """Whether ``fn``'s body is arithmetic on its arguments only (no jump, call, global or
    subscript): applied to whole blocks it computes each element as it would one at a time."""
    import dis

    names = {i.opname for i in dis.get_instructions(fn)}
    names = {n for n in names if not (n.startswith("BINARY_") and n not in ("BINARY_SUBSCR", "BINARY_SLICE"))}
    return names <= _ELEMENTWISE_OPS


def _reduce_blocks_with_branch_free_combines():
    """The interpreter reduces with a custom combine function (``tl.reduce(x, 1, _or)``: the
    signature kernel's words) one element at a time, calling the combine once per element (a
    third of a memory write test's time). For a branch-free combine, fold whole slices along the
    axis instead, in the same order (element 0, then 1, ...): each output element goes through the
    same operations on the same values, cast back to the input's dtype as the element loop does.
    Other combines (and the built-in sum, min, max, which take numpy already) keep triton's path."""
    try:
        import numpy as np
        import triton.runtime.interpreter as interp
    except ImportError:  # pragma: no cover - triton missing
        return
    ops = getattr(interp, "ReduceOps", None)
    if (ops is None or not all(hasattr(ops, name) for name in ("generic_reduce", "unravel", "to_tensor"))
            or getattr(ops.generic_reduce, "_vidhash_patched", False)):
        return
    element_loop = ops.generic_reduce

    def generic_reduce(self, input):
        fn = getattr(self.combine_fn, "fn", None)
        if fn is None or not _branch_free(fn):
            return element_loop(self, input)
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        data = [arg.handle.data for arg in input]
        acc = [np.take(d, 0, axis=axis) for d in data]
        for i in range(1, data[0].shape[axis]):
            ret = fn(*(self.to_tensor(a, arg.dtype) for a, arg in zip(acc, input)),
                     *(self.to_tensor(np.take(d, i, axis=axis), arg.dtype) for d, arg in zip(data, input)))
            ret = ret if isinstance(ret, tuple) else (ret,)
            acc = [np.asarray(r.handle.data if isinstance(r, interp.tl.core.tensor) else r).astype(d.dtype)
                   .reshape(a.shape) for r, d, a in zip(ret, data, acc)]
        out = []
        for a, arg in zip(acc, input):
            if self.keep_dims:
                a = np.expand_dims(a, axis) if original_axis is not None else a.reshape((1,) * data[0].ndim)
            elif original_axis is None:
                a = a.item()
            out.append(self.to_tensor(a, arg.dtype))
        return out

    generic_reduce._vidhash_patched, generic_reduce._element_loop = True, element_loop
    generic_reduce._branch_free = _branch_free
    ops.generic_reduce = generic_reduce


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_language_once_per_launch()
    _reduce_blocks_with_branch_free_combines()


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
