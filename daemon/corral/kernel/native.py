"""Import wrapper for the cffi extension ``corral._native``.

The extension is built by ``pip install -e .`` (setup.py -> cffi_modules ->
native/build_native.py) and links libseccomp. Anything that needs it calls
:func:`load`, which turns a missing or broken build into one clear error
instead of an ImportError traceback.
"""
from __future__ import annotations

import errno as _errno
import os

# ffi and lib are served lazily by __getattr__ below.
__all__ = ["NativeUnavailable", "NativeError", "load", "available", "ffi", "lib", "check"]  # noqa: F822


class NativeUnavailable(RuntimeError):
    """The C extension is not built (or libseccomp is missing at run time)."""


class NativeError(OSError):
    """A native helper returned -errno."""


_HINT = ("corral native extension not built: run `make install` (or "
         "`pip install -e .` inside the project venv) with libseccomp-dev, "
         "python3-dev and libffi-dev installed")

_mod = None
_err: str | None = None


def _import():
    global _mod, _err
    if _mod is not None or _err is not None:
        return
    try:
        from corral import _native  # type: ignore[attr-defined]
    except ImportError as e:  # not built, or libseccomp.so.2 missing
        _err = f"{_HINT} ({e})"
        return
    _mod = _native


def available() -> bool:
    _import()
    return _mod is not None


def load():
    """Return the extension module (has ``.ffi`` and ``.lib``) or raise NativeUnavailable."""
    _import()
    if _mod is None:
        raise NativeUnavailable(_err)
    return _mod


def check(ret: int, what: str) -> int:
    """Raise NativeError for a negative (-errno) return of a native helper."""
    if ret < 0:
        e = -ret
        raise NativeError(e, f"{what}: {os.strerror(e)} ({_errno.errorcode.get(e, e)})")
    return ret


def __getattr__(name: str):
    # corral.native.ffi / corral.native.lib, resolved lazily so that importing
    # this module never fails.
    if name in ("ffi", "lib"):
        return getattr(load(), name)
    raise AttributeError(name)
