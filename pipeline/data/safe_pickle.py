"""Reading a pickle without trusting it: `restricted_load`.

Unpickling an arbitrary file can run code, so the unpickler resolves only the few globals numpy
arrays need, and anything else (`os.system`, `builtins.eval`, …) is refused before it is called.
Every array must be filled from bytes of the file, exactly as many as its shape declares, and
all of them together may take no more than the file's size on disk: a shape alone is never
allocated, nor is a memo table larger than the file's opcodes, nor a byte string decoded twice.
A dtype is a plain type code that nothing after its one BUILD state can change. The result is
walked once per object (shared references are not walked again), so a small pickle cannot make
the walk exponential.
"""

from __future__ import annotations

import codecs
import importlib
import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.pickled_dtype import (
    BadArray,
    ForbiddenGlobal,
    PickledDtype,
    checked_dtype,
    pickled_dtype,
)
from pipeline.errors import PipelineError


class _BadMemo(Exception):
    """A memo index no pickler would write: the C unpickler sizes its table to it, unread."""


def _numpy_attribute(module: str, name: str) -> Any:
    """numpy 2 moved numpy.core → numpy._core; resolve either spelling."""
    if module.startswith("numpy.core") and hasattr(np, "_core"):
        module = module.replace("numpy.core", "numpy._core", 1)
    return getattr(importlib.import_module(module), name)


_NUMPY_SCALAR = _numpy_attribute("numpy.core.multiarray", "scalar")
_NUMPY_FROMBUFFER = _numpy_attribute("numpy.core.numeric", "_frombuffer")
MAX_DIMENSIONS = 64  # numpy 2's limit; a longer shape is not an array numpy wrote


def _empty_bytes(*args: Any) -> bytes:
    """builtins.bytes as protocol 2 writes b"": called with nothing (`bytes(n)` makes n bytes)."""
    if args:
        raise ForbiddenGlobal("builtins.bytes with arguments")
    return b""


class _NdarrayToken:
    """Stands in for numpy.ndarray in a pickle: only `_reconstruct` accepts it, so the class itself
    can never be called with an attacker's shape, dtype and buffer."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ForbiddenGlobal("numpy.ndarray called directly (an array over raw bytes)")


_NDARRAY = _NdarrayToken()


def _array_nbytes(shape: Any, dtype: np.dtype) -> int:
    """Bytes an array of `shape` and `dtype` holds, in Python integers (numpy's product can wrap)."""
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMENSIONS:
        raise BadArray(f"an array whose shape is a {type(shape).__name__}, not a tuple of sizes")
    if not all(isinstance(size, int) and size >= 0 for size in shape):
        raise BadArray("an array whose shape is not a tuple of sizes ≥ 0")
    return math.prod(shape) * dtype.itemsize


def _must_be_filled(what: str, nbytes: int, data: Any) -> None:
    """Refuse `data` unless it is exactly the `nbytes` bytes `what` needs."""
    if isinstance(data, (bytes, bytearray)) and len(data) == nbytes:
        return
    found = f"{len(data):,}" if isinstance(data, (bytes, bytearray)) else "none"
    raise BadArray(f"{what} needs {nbytes:,} bytes, found {found}")


class _ByteBudget:
    """The bytes all of a pickle's arrays and numpy scalars may take: each comes from the file, so
    together they never exceed its size on disk (a CIFAR batch: 30,720,000 bytes of pixels in a
    31 MB file). Checked before numpy allocates anything. Byte strings `_codecs.encode` makes
    have a budget of their own, also the file's size: an array's bytes are first such a string."""

    def __init__(
        self,
        file_bytes: int,
        earlier: str = "earlier arrays",
        repeated: str = "arrays sharing one byte string",
    ) -> None:
        self.file_bytes = file_bytes
        self.used = 0
        self._earlier = earlier
        self._repeated = repeated

    def check(self, what: str, nbytes: int) -> None:
        if nbytes > self.file_bytes:
            raise BadArray(
                f"{what} takes {nbytes:,} bytes, more than the whole file ({self.file_bytes:,} bytes) holds"
            )
        if self.used + nbytes > self.file_bytes:
            raise BadArray(
                f"{what} takes {nbytes:,} bytes, but {self._earlier} already took {self.used:,} "
                f"of the file's {self.file_bytes:,} ({self._repeated})"
            )

    def take(self, what: str, nbytes: int) -> None:
        self.check(what, nbytes)
        self.used += nbytes


class _PendingArray:
    """What `_reconstruct` gives: an array that exists once its BUILD state brings exactly
    shape × itemsize bytes. numpy's own `_reconstruct` allocates the declared shape uninitialised,
    so without a state it would hand out 15 GB, or process memory read as images."""

    __hash__ = None  # like an ndarray: never a dict key or a set member

    def __init__(self, budget: _ByteBudget, array: np.ndarray | None = None) -> None:
        self._budget = budget
        self.array = array  # `_frombuffer`'s, already filled: a BUILD would re-shape it

    def __setstate__(self, state: Any) -> None:
        """ndarray's state: (version, shape, dtype, is_fortran, raw bytes), or without version."""
        if self.array is not None:
            raise BadArray("an array filled twice (two BUILD states)")
        fields = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
        if not (isinstance(fields, tuple) and len(fields) == 4):
            raise BadArray("an array whose BUILD state is not numpy's (shape, dtype, order, bytes)")
        shape, given_dtype, is_fortran, data = fields
        if not isinstance(given_dtype, PickledDtype):
            raise BadArray(f"an array whose dtype is a {type(given_dtype).__name__}")
        dtype = checked_dtype(given_dtype)
        nbytes = _array_nbytes(shape, dtype)
        what = f"an array of shape {shape} {dtype}"
        _must_be_filled(what, nbytes, data if isinstance(data, bytes) else None)
        self._budget.take(what, nbytes)
        array = np.empty(0, np.uint8)
        array.__setstate__((1, shape, dtype, is_fortran, data))  # numpy's own: Fortran order
        self.array = array

    def filled(self) -> np.ndarray:
        if self.array is None:
            raise BadArray("an array whose data never came (_reconstruct without a BUILD state)")
        return self.array


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy-array pickles reference, each checked against the file."""

    def __init__(self, handle: Any, file_bytes: int) -> None:
        super().__init__(handle, encoding="bytes")
        self._budget = _ByteBudget(file_bytes)
        self._encoded = _ByteBudget(
            file_bytes, "earlier _codecs.encode calls", "one text encoded again and again"
        )
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): pickled_dtype,
            ("_codecs", "encode"): self._latin1_bytes,  # how Python 3 writes bytes in protocol 2
            ("__builtin__", "bytes"): _empty_bytes,  # ... and b"" (an empty array's data)
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy.core.numeric", "_frombuffer"): self._frombuffer,  # protocol 5
        }

    def find_class(self, module: str, name: str) -> Any:
        numpy_1_module = module.replace("numpy._core.", "numpy.core.", 1)  # numpy 2's spelling
        if (numpy_1_module, name) not in self._allowed:
            raise ForbiddenGlobal(f"{module}.{name}")
        return self._allowed[(numpy_1_module, name)]

    def _latin1_bytes(self, text: Any, encoding: Any) -> bytes:
        """_codecs.encode as protocol 2 writes bytes, `encode('\\x00\\xff…', 'latin1')`: one byte
        per character of the file's text, once (another codec, 'hex', doubles its input on every
        call; one text in the memo, encoded 300 times, would be 300 copies)."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise ForbiddenGlobal("_codecs.encode other than text to latin1 bytes")
        self._encoded.take(f"_codecs.encode of {len(text):,} characters", len(text))
        return codecs.encode(text, "latin1")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> _PendingArray:
        if subtype is not _NDARRAY:
            raise ForbiddenGlobal("an array of a type other than numpy.ndarray")
        declared = checked_dtype(dtype)  # numpy writes (0,) and b'b'; BUILD brings the real ones
        nbytes = _array_nbytes(shape, declared)
        self._budget.check(f"an array of shape {shape} {declared}", nbytes)
        return _PendingArray(self._budget)

    def _scalar(self, dtype: Any, *data: Any) -> Any:
        checked = checked_dtype(dtype)
        what = f"a numpy scalar of {checked}"
        _must_be_filled(what, checked.itemsize, data[0] if len(data) == 1 else None)
        self._budget.take(what, checked.itemsize)
        return _NUMPY_SCALAR(checked, bytes(data[0]))

    def _frombuffer(
        self, buffer: Any, dtype: Any, shape: Any, order: Any, *axis_order: Any
    ) -> _PendingArray:
        checked = checked_dtype(dtype)
        nbytes = _array_nbytes(shape, checked)
        what = f"an array of shape {shape} {checked}"
        _must_be_filled(what, nbytes, buffer)
        if order not in ("C", "F", "K") or not all(
            axes is None or (isinstance(axes, tuple) and all(isinstance(a, int) for a in axes))
            for axes in axis_order
        ):
            raise BadArray(f"{what} in an order numpy does not write")
        self._budget.take(what, nbytes)
        array = _NUMPY_FROMBUFFER(buffer, checked, shape, order, *axis_order)
        return _PendingArray(self._budget, array)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _filled_arrays(content: Any) -> Any:
    """`content` with every pending array replaced by its filled array and every pickled dtype
    by its numpy dtype, and no array of Python objects anywhere (belt and braces: every dtype an
    array was given is already plain).

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
            if isinstance(item, (_PendingArray, PickledDtype)):
                if place is None:
                    raise BadArray(
                        "an array or dtype inside a tuple (arrays belong in dicts and lists)"
                    )
                filled = item.filled() if isinstance(item, _PendingArray) else item.dtype
                item = container[place] = filled
            if isinstance(item, np.ndarray) and item.dtype.hasobject:
                raise ForbiddenGlobal("numpy arrays of Python objects")
            if isinstance(item, _CONTAINERS) and id(item) not in seen:
                seen.add(id(item))
                unvisited.append(item)
    return top[0]


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})  # MEMOIZE takes the next index itself


def _scanned_length(data: bytes) -> int:
    """How much of `data` the unpickler may read: through its STOP, once every memo index is
    below the number of opcodes before it. The C unpickler grows its memo table to twice the
    largest index, unread: LONG_BINPUT 2**26 in a 9-byte file is 1 GB; a pickler numbers the memo
    0, 1, 2, …, so the table stays at 16 bytes per opcode. Where pickletools cannot read an opcode
    (truncated, unknown, a line it parses otherwise) the unpickler gets only up to that opcode's
    first byte: it then fails there too, in its own words, never reading what was not checked.
    Measured on this 2-core machine: 0.07 s for a 31 MB CIFAR batch, 0.4 s for the 46 MB one
    `write_cifar_batch` writes (90,000 opcodes)."""
    stream = io.BytesIO(data)
    checked = 0
    try:
        for count, (opcode, index, _) in enumerate(pickletools.genops(stream)):
            if opcode.name in _MEMO_PUTS and index >= count:
                raise _BadMemo(
                    f"a memo index of {index:,} at byte {checked:,}, after only {count:,} "
                    f"opcodes (the unpickler would allocate {16 * index:,} bytes for it)"
                )
            checked = stream.tell()
    except ValueError:
        return checked + 1
    return checked


def restricted_load(path: Path) -> Any:
    """Unpickle `path` allowing only numpy arrays filled from the file's own bytes and plain
    containers; refuse anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()  # a CIFAR batch: 31 MB
        if not data:
            raise PipelineError(f"{path}: file is empty, expected a pickle")
        scanned = _scanned_length(data)
        readable = data if scanned == len(data) else data[:scanned]
        content = _RestrictedUnpickler(io.BytesIO(readable), len(data)).load()
        return _filled_arrays(content)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except ForbiddenGlobal as error:
        raise PipelineError(
            f"{path}: refused: the pickle asks for {error}; only numeric numpy arrays and plain "
            "containers are allowed (anything else could run code or corrupt memory); nothing in it was run"
        ) from None
    except _BadMemo as error:
        raise PipelineError(
            f"{path}: refused: {error}; a pickler numbers its memo 0, 1, 2, …, so the file is "
            "damaged or hostile"
        ) from None
    except BadArray as error:
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
