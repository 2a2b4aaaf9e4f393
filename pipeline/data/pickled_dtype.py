"""numpy dtypes as a pickle names them, checked: one plain number per item, nothing a later
BUILD state can reshape (data/safe_pickle.py's restricted unpickler resolves `numpy.dtype` here)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ForbiddenGlobal(Exception):
    pass


class BadArray(Exception):
    """An array or numpy scalar whose bytes do not come from the file at the size it declares."""


def plain_dtype(dtype: np.dtype) -> np.dtype:
    """`dtype` if each of its items is a fixed number of bytes read as one value: no Python objects
    (object arrays built from pickled bytes hold raw pointers), no fields or subarray (offsets and
    sizes a BUILD state picks), and at least one byte (numpy reads 'V0' grown to 'V8' over none)."""
    if dtype.hasobject:
        raise ForbiddenGlobal("numpy arrays of Python objects")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise ForbiddenGlobal(f"a structured dtype ({dtype}), not one plain number per item")
    if dtype.itemsize == 0:
        raise ForbiddenGlobal(f"a dtype of no size ({dtype.str})")
    return dtype


def dtype_of_type_code(type_code: Any) -> np.dtype:
    """The plain dtype a type code ('u1', b'B') names. Anything else is refused unread: numpy
    prints a nested list into its error, exponentially long when the list shares references."""
    if not isinstance(type_code, (str, bytes)):
        raise ForbiddenGlobal(f"a dtype made from a {type(type_code).__name__}")
    return plain_dtype(np.dtype(type_code))


class PickledDtype:
    """What `numpy.dtype(code, False, True)` gives a pickle: a type code, and the byte order (a
    datetime's unit) its one BUILD state brings. numpy's own call would give a mutable copy that
    any later BUILD reshapes (new fields, a new item size) under an array already checked."""

    __hash__ = None  # like numpy's copy as a pickle holds it: never a dict key or a set member

    def __init__(self, type_code: Any) -> None:
        self.dtype = dtype_of_type_code(type_code)  # before BUILD: native order, as numpy's copy
        self._built = False

    def __setstate__(self, state: Any) -> None:
        """numpy's state: (3, byte order, subarray, names, fields, item size, alignment, flags),
        and for version 4 a ninth item, the metadata: (None, (unit, count, 1, 1)) for datetimes.
        Item size, alignment and flags are the type code's own; this keeps none of them."""
        if self._built:
            raise BadArray(f"a {self.dtype} dtype changed by a second BUILD state")
        self._built = True
        if not (isinstance(state, tuple) and len(state) in (8, 9)):
            raise BadArray(f"a {self.dtype} dtype whose BUILD state is not numpy's")
        byteorder = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if any(part is not None for part in state[2:5]):
            raise ForbiddenGlobal(f"a structured dtype ({self.dtype} given fields or a subarray)")
        if byteorder not in ("<", ">", "=", "|"):  # never printed: it may be any object
            raise BadArray(f"a {self.dtype} dtype whose byte order is not one of < > = |")
        dtype = self.dtype
        if dtype.kind in "mM":  # 'M8' + (b's', 1, 1, 1): datetime64[s]
            metadata = state[8] if len(state) == 9 else None
            unit = metadata[1] if isinstance(metadata, tuple) and len(metadata) == 2 else None
            if not (
                isinstance(unit, tuple)
                and len(unit) == 4
                and isinstance(unit[0], (bytes, str))
                and isinstance(unit[1], int)
            ):
                raise BadArray(f"a {dtype} dtype without numpy's (unit, count) in its state")
            name = unit[0].decode("ascii") if isinstance(unit[0], bytes) else unit[0]
            dtype = np.dtype(f"{dtype.char}8[{unit[1]}{name}]")
        self.dtype = plain_dtype(dtype.newbyteorder(byteorder))


def checked_dtype(dtype: Any) -> np.dtype:
    """The plain dtype of a `numpy.dtype` call or a type code, checked again where its bytes are
    counted."""
    if isinstance(dtype, PickledDtype):
        return plain_dtype(dtype.dtype)
    return dtype_of_type_code(dtype)


def pickled_dtype(type_code: Any, *flags: Any) -> PickledDtype:
    """numpy.dtype as pickles call it: `dtype('u1', False, True)`, a type code and two flags
    (align, copy: neither changes a plain dtype)."""
    if len(flags) > 2 or not all(isinstance(flag, int) for flag in flags):
        raise ForbiddenGlobal("numpy.dtype with arguments other than a type code and two flags")
    return PickledDtype(type_code)
