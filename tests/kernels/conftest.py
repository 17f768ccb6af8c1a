"""Kernel tests run the Triton kernels' own code on CPU under ``TRITON_INTERPRET=1`` when no
CUDA device is present (set before triton is imported)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_interpreter_for_numpy_2_4():
    """triton 3.6's interpreter converts 1-element arrays with ``int()``, which numpy >= 2.4
    refuses (triton-lang/triton#9171, fixed upstream by #9172); squeeze first."""
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # pragma: no cover - triton missing
        return
    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_vidhash_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._vidhash_patched = True
    interp._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_for_numpy_2_4()
