"""The one exception type users see: a clear, one-line message naming what was wrong."""

from __future__ import annotations

import importlib
from types import ModuleType


class AdaptertxError(Exception):
    """Bad input or a failed precondition; the CLI prints the message and exits non-zero."""


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module`` for a part installed by the extra ``adaptertx[extra]``.

    Raises :class:`AdaptertxError` naming the extra when the package is not installed (an
    installed package that fails to import raises its own error).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name != top:
            raise
        raise AdaptertxError(f"{purpose} needs {top}, which is not installed: "
                             f"pip install 'adaptertx[{extra}]'") from None
