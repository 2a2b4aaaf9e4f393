"""Reading a pickle without trusting it: `restricted_load`.

Unpickling an arbitrary file can run code, so the unpickler resolves only the few globals numpy
arrays need, and anything else (`os.system`, `builtins.eval`, …) is refused before it is called.
Every array must be filled from bytes of the file, exactly as many as its shape declares, and
all of them together may take no more than the file's size on disk: a shape alone is never
allocated. The result is walked once per object (shared references are not walked again), so a
small pickle cannot make the walk exponential.
"""

from __future__ import annotations

import codecs
import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError


class _ForbiddenGlobal(Exception):
    pass


class _BadArray(Exception):
    """An array or numpy scalar whose bytes do not come from the file at the size it declares."""


def _numpy_attribute(module: str, name: str) -> Any:
    """numpy 2 moved numpy.core → numpy._core; resolve either spelling."""
    if module.startswith("numpy.core") and hasattr(np, "_core"):
        module = module.replace("numpy.core", "numpy._core", 1)
    return getattr(importlib.import_module(module), name)


_NUMPY_SCALAR = _numpy_attribute("numpy.core.multiarray", "scalar")
_NUMPY_FROMBUFFER = _numpy_attribute("numpy.core.numeric", "_frombuffer")
MAX_DIMENSIONS = 64  # numpy 2's limit; a longer shape is not an array numpy wrote


def _plain_dtype(dtype: Any) -> np.dtype:
    """A dtype without Python objects: object arrays built from pickled bytes hold raw pointers."""
    checked = np.dtype(dtype)
    if checked.hasobject:
        raise _ForbiddenGlobal("numpy arrays of Python objects")
    return checked


def _type_code(dtype: Any) -> np.dtype:
    """A dtype, or the type code ('u1', b'b') pickles name one by, as a plain dtype. Anything
    else is refused unread: numpy prints a nested list into its error, exponentially long when
    the list shares references."""
    if not isinstance(dtype, (np.dtype, str, bytes)):
        raise _ForbiddenGlobal(f"a dtype made from a {type(dtype).__name__}")
    return _plain_dtype(dtype)


def _dtype(type_code: Any, *flags: Any) -> np.dtype:
    """numpy.dtype as pickles call it: `dtype('u1', False, True)`, a type code and two flags."""
    if len(flags) > 2 or not all(isinstance(flag, int) for flag in flags):
        raise _ForbiddenGlobal("numpy.dtype with arguments other than a type code and two flags")
    return np.dtype(_type_code(type_code), *flags)


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """_codecs.encode as protocol 2 writes bytes, `encode('\\x00\\xff…', 'latin1')`: one byte per
    character of the file's text (another codec, 'hex', doubles its input on every call)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _ForbiddenGlobal("_codecs.encode other than text to latin1 bytes")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    """builtins.bytes as protocol 2 writes b"": called with nothing (`bytes(n)` makes n bytes)."""
    if args:
        raise _ForbiddenGlobal("builtins.bytes with arguments")
    return b""


class _NdarrayToken:
    """Stands in for numpy.ndarray in a pickle: only `_reconstruct` accepts it, so the class itself
    can never be called with an attacker's shape, dtype and buffer."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _ForbiddenGlobal("numpy.ndarray called directly (an array over raw bytes)")


_NDARRAY = _NdarrayToken()


def _array_nbytes(shape: Any, dtype: np.dtype) -> int:
    """Bytes an array of `shape` and `dtype` holds, in Python integers (numpy's product can wrap)."""
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMENSIONS:
        raise _BadArray(f"an array whose shape is a {type(shape).__name__}, not a tuple of sizes")
    if not all(isinstance(size, int) and size >= 0 for size in shape):
        raise _BadArray("an array whose shape is not a tuple of sizes ≥ 0")
    return math.prod(shape) * dtype.itemsize


def _must_be_filled(what: str, nbytes: int, data: Any) -> None:
    """Refuse `data` unless it is exactly the `nbytes` bytes `what` needs."""
    if isinstance(data, (bytes, bytearray)) and len(data) == nbytes:
        return
    found = f"{len(data):,}" if isinstance(data, (bytes, bytearray)) else "none"
    raise _BadArray(f"{what} needs {nbytes:,} bytes, found {found}")


class _ByteBudget:
    """The bytes all of a pickle's arrays and numpy scalars may take: each comes from the file, so
    together they never exceed its size on disk (a CIFAR batch: 30,720,000 bytes of pixels in a
    31 MB file). Checked before numpy allocates anything."""

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes = file_bytes
        self.used = 0

    def check(self, what: str, nbytes: int) -> None:
        if nbytes > self.file_bytes:
            raise _BadArray(
                f"{what} takes {nbytes:,} bytes, more than the whole file ({self.file_bytes:,} bytes) holds"
            )
        if self.used + nbytes > self.file_bytes:
            raise _BadArray(
                f"{what} takes {nbytes:,} bytes, but earlier arrays already took {self.used:,} "
                f"of the file's {self.file_bytes:,} (arrays sharing one byte string)"
            )

    def take(self, what: str, nbytes: int) -> None:
        self.check(what, nbytes)
        self.used += nbytes


class _PendingArray:
    """What `_reconstruct` gives: an array that exists once its BUILD state brings exactly
    shape × itemsize bytes. numpy's own `_reconstruct` allocates the declared shape uninitialised,
    so without a state it would hand out 15 GB, or process memory read as images."""

    __hash__ = None  # like an ndarray: never a dict key or a set member

    def __init__(self, budget: _ByteBudget) -> None:
        self._budget = budget
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        """ndarray's state: (version, shape, dtype, is_fortran, raw bytes), or without version."""
        if self.array is not None:
            raise _BadArray("an array filled twice (two BUILD states)")
        fields = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
        if not (isinstance(fields, tuple) and len(fields) == 4):
            raise _BadArray(
                "an array whose BUILD state is not numpy's (shape, dtype, order, bytes)"
            )
        shape, dtype, _, data = fields
        if not isinstance(dtype, np.dtype):
            raise _BadArray(f"an array whose dtype is a {type(dtype).__name__}")
        nbytes = _array_nbytes(shape, _plain_dtype(dtype))
        what = f"an array of shape {shape} {dtype}"
        _must_be_filled(what, nbytes, data if isinstance(data, bytes) else None)
        self._budget.take(what, nbytes)
        array = np.empty(0, np.uint8)
        array.__setstate__(state)  # numpy's own: byte order, Fortran order
        self.array = array

    def filled(self) -> np.ndarray:
        if self.array is None:
            raise _BadArray("an array whose data never came (_reconstruct without a BUILD state)")
        return self.array


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy-array pickles reference, each checked against the file."""

    def __init__(self, handle: Any, file_bytes: int) -> None:
        super().__init__(handle, encoding="bytes")
        self._budget = _ByteBudget(file_bytes)
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _dtype,
            ("_codecs", "encode"): _latin1_bytes,  # how Python 3 writes bytes in protocol 2
            ("__builtin__", "bytes"): _empty_bytes,  # ... and b"" (an empty array's data)
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy.core.numeric", "_frombuffer"): self._frombuffer,  # protocol 5
        }

    def find_class(self, module: str, name: str) -> Any:
        numpy_1_module = module.replace("numpy._core.", "numpy.core.", 1)  # numpy 2's spelling
        if (numpy_1_module, name) not in self._allowed:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return self._allowed[(numpy_1_module, name)]

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> _PendingArray:
        if subtype is not _NDARRAY:
            raise _ForbiddenGlobal("an array of a type other than numpy.ndarray")
        declared = _type_code(dtype)  # numpy writes (0,) and b'b'; BUILD brings the real ones
        nbytes = _array_nbytes(shape, declared)
        self._budget.check(f"an array of shape {shape} {declared}", nbytes)
        return _PendingArray(self._budget)

    def _scalar(self, dtype: Any, *data: Any) -> Any:
        checked = _type_code(dtype)
        what = f"a numpy scalar of {checked}"
        _must_be_filled(what, checked.itemsize, data[0] if len(data) == 1 else None)
        self._budget.take(what, checked.itemsize)
        return _NUMPY_SCALAR(checked, bytes(data[0]))

    def _frombuffer(
        self, buffer: Any, dtype: Any, shape: Any, order: Any, *axis_order: Any
    ) -> np.ndarray:
        checked = _type_code(dtype)
        nbytes = _array_nbytes(shape, checked)
        what = f"an array of shape {shape} {checked}"
        _must_be_filled(what, nbytes, buffer)
        if order not in ("C", "F", "K") or not all(
            axes is None or (isinstance(axes, tuple) and all(isinstance(a, int) for a in axes))
            for axes in axis_order
        ):
            raise _BadArray(f"{what} in an order numpy does not write")
        self._budget.take(what, nbytes)
        return _NUMPY_FROMBUFFER(buffer, checked, shape, order, *axis_order)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _filled_arrays(content: Any) -> Any:
    """`content` with every pending array replaced by its filled array, and no array of Python
    objects anywhere (belt and braces: a dtype's BUILD could add object fields after its array).

    Each container is visited once: through the memo, 40 nested `x = [x, x]` lists in a tiny
    pickle stand for 2**40 paths."""
    top = [content]
    seen = {id(top)}
    unvisited: list[Any] = [top]
    while unvisited:
        container = unvisited.pop()
        if isinstance(container, dict):
            places: Any = container.items()
        elif isinstance(container, list):
            places = enumerate(container)
        else:  # tuples; sets and frozensets cannot hold an unhashable pending array
            places = ((None, item) for item in container)
        for place, item in places:
            if isinstance(item, _PendingArray):
                if place is None:
                    raise _BadArray("an array inside a tuple (arrays belong in dicts and lists)")
                item = container[place] = item.filled()
            if isinstance(item, np.ndarray) and item.dtype.hasobject:
                raise _ForbiddenGlobal("numpy arrays of Python objects")
            if isinstance(item, _CONTAINERS) and id(item) not in seen:
                seen.add(id(item))
                unvisited.append(item)
    return top[0]


def restricted_load(path: Path) -> Any:
    """Unpickle `path` allowing only numpy arrays filled from the file's own bytes and plain
    containers; refuse anything else."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if handle.read(1) == b"":
                raise PipelineError(f"{path}: file is empty, expected a pickle")
            handle.seek(0)
            file_bytes = os.fstat(handle.fileno()).st_size
            content = _RestrictedUnpickler(handle, file_bytes).load()
        return _filled_arrays(content)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except _ForbiddenGlobal as error:
        raise PipelineError(
            f"{path}: refused: the pickle asks for {error}; only numeric numpy arrays and plain "
            "containers are allowed (anything else could run code or corrupt memory); nothing in it was run"
        ) from None
    except _BadArray as error:
        raise PipelineError(
            f"{path}: refused: {error}; numpy's own pickles carry each array's bytes, so the file "
            "is damaged or hostile"
        ) from None
    except EOFError:
        raise PipelineError(f"{path}: pickle is truncated (ended before its STOP opcode)") from None
    except PipelineError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoding failure means a malformed pickle
        raise PipelineError(
            f"{path}: not a valid pickle ({type(error).__name__}: {error})"
        ) from None
