"""Reading data-set pickles without running code from them.

`pickle.load` calls whatever a file names, so a crafted file executes code. `load_plain_pickle`
uses a restricted unpickler that resolves only the globals numpy needs to rebuild an array
(`_reconstruct`, `ndarray`, `dtype`) plus a latin-1-only `_codecs.encode` (how Python 3 writes
bytes at protocol 2), and then checks that the result holds nothing but dicts, lists, tuples, str,
bytes, numbers and numeric numpy arrays. That is everything the official CIFAR-100 python pickles
(Python 2, read with `encoding="latin1"` as torchvision does) and faithful copies of them contain.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.core.errors import DataError


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` limited to what protocol-2 pickles of bytes use."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed in a data pickle")
    return text.encode("latin1")


try:  # numpy >= 2 moved numpy.core to numpy._core; pickles name either
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
PLAIN_TYPES = (dict, list, tuple, str, bytes, int, float, bool, type(None))


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds containers, scalars and numpy arrays and refuses all else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a data pickle may only hold containers, "
                "strings, numbers and numpy arrays"
            ) from None


def loads_plain(data: bytes) -> Any:
    """Unpickle `data` (latin-1 for Python 2 strings) and check it holds only plain values."""
    value = PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    _check_plain(value)
    return value


def load_plain_pickle(path: Path) -> dict[str, Any]:
    """The dict pickled in `path`, read with `PlainUnpickler`; DataError if it is anything else."""
    try:
        value = loads_plain(path.read_bytes())
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        RecursionError,
    ) as error:
        raise DataError(f"{path} is truncated, damaged or not a data pickle ({error})") from error
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a {type(value).__name__}, not the expected dict")
    return value


def _check_plain(value: Any) -> None:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise pickle.UnpicklingError("an object array is not allowed in a data pickle")
        return
    if not isinstance(value, PLAIN_TYPES):
        raise pickle.UnpicklingError(f"a {type(value).__name__} is not allowed in a data pickle")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key)
            _check_plain(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item)
