"""Triton's interpreter (``TRITON_INTERPRET=1``: kernels run on CPU tensors) made to work with the
numpy this project installs. Applied by ``vidhash/__init__.py`` whenever that variable is set, so
the tests, the CLI's CPU smoke runs (``vidhash bench attention --device cpu``) and a user's own
calls all run the same interpreter."""
from __future__ import annotations

import os


def patch_for_numpy_2_4() -> bool:
    """triton 3.6's interpreter converts 1-element arrays with ``int()``, which numpy >= 2.4
    refuses (triton-lang/triton#9171, fixed upstream by #9172): squeeze first. Idempotent; returns
    whether the interpreter is now patched (False without triton or without the hook)."""
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # triton missing: nothing to patch
        return False
    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, "_vidhash_patched", False):
        return True

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._vidhash_patched = True
    interp._patch_lang_tensor = patched
    return True


def apply_if_interpreting() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        patch_for_numpy_2_4()
