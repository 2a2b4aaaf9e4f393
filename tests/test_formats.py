"""The competition's pickles: written like the originals, read only through the restricted unpickler."""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    Python2StylePickler,
    python2_style_pickle,
    write_python2_style_batch,
    write_small_custom_test,
)

from pipeline.data.formats import (
    CIFAR_FOLDER,
    TRAIN_BATCH_NAMES,
    images_to_planes,
    load_cifar_batch,
    load_class_names,
    load_custom_test,
    planes_to_images,
    write_cifar_batch,
)
from pipeline.data.safe_pickle import restricted_load
from pipeline.errors import PipelineError


def test_batches_are_written_as_protocol_2_with_byte_string_keys(synthetic_raw: Path) -> None:
    path = synthetic_raw / CIFAR_FOLDER / TRAIN_BATCH_NAMES[0]
    raw_bytes = path.read_bytes()
    assert raw_bytes[:2] == b"\x80\x02"  # PROTO 2
    with path.open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (40, 3072)


def test_python2_style_batch_loads_with_planes_turned_channels_last(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12) % 10
    path = tmp_path / "data_batch_1"
    write_python2_style_batch(path, images, labels)
    assert b"_codecs" not in path.read_bytes()  # really the old opcodes
    loaded_images, loaded_labels = load_cifar_batch(path)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_plane_rows_round_trip_and_match_cifar_layout() -> None:
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    image[0, 0, 1, 0] = 7  # red channel, row 0, column 1
    image[0, 0, 0, 2] = 9  # blue channel, row 0, column 0
    rows = images_to_planes(image)
    assert rows[0, 1] == 7 and rows[0, 2048] == 9  # R plane first, B plane at 2 * 1024
    np.testing.assert_array_equal(planes_to_images(rows), image)


@pytest.mark.parametrize("layout", ["2025", "2024"])
def test_both_custom_test_layouts_load_to_the_same_images(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "custom.pkl"
    images, ids = write_small_custom_test(path, count=30, layout=layout)
    loaded_images, loaded_ids = load_custom_test(path)
    assert loaded_images.shape == (30, 32, 32, 3) and loaded_images.dtype == np.uint8
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_ids, ids)


def test_class_names_come_back_as_text(synthetic_raw: Path) -> None:
    names = load_class_names(synthetic_raw / CIFAR_FOLDER / "batches.meta")
    assert names[0] == "airplane" and names[-1] == "truck"


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(pickle.dumps({b"data": _RunsACommand(marker), b"ids": [0]}))
    with pytest.raises(
        PipelineError, match=r"cifar_test_nolabel\.pkl: refused: .*(posix|os)\.system"
    ):
        load_custom_test(path)
    assert not marker.exists()


class _ObjectArrayFromBytes:
    """Calls numpy.ndarray directly: an object array whose 'pointers' are the attacker's bytes."""

    def __init__(self, dtype: object) -> None:
        self.dtype = dtype

    def __reduce__(self):
        return (np.ndarray, ((1,), self.dtype, b"\x41" * 8))


class _ObjectScalar:
    def __reduce__(self):
        return (np._core.multiarray.scalar, (np.dtype("O"), b"\x41" * 8))


@pytest.mark.parametrize(
    "payload",
    [
        _ObjectArrayFromBytes(np.dtype("O")),
        _ObjectArrayFromBytes("O"),
        _ObjectScalar(),
        np.array([1, "x"], dtype=object),
    ],
    ids=["ndarray-call-dtype", "ndarray-call-string", "object-scalar", "object-array"],
)
def test_object_arrays_from_pickled_bytes_are_refused(tmp_path: Path, payload: object) -> None:
    """These use only numpy's own globals, yet would dereference attacker bytes as pointers."""
    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(
        pickle.dumps(
            {b"data": np.zeros((2, 32, 32, 3), np.uint8), b"ids": [payload] * 2}, protocol=2
        )
    )
    with pytest.raises(PipelineError, match="refused"):
        load_custom_test(path)


def test_hostile_global_in_python2_style_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x05\x00\x00\x001+1+1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(PipelineError, match="builtins.eval"):
        restricted_load(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "file is empty"),
        (pickle.dumps({b"data": 1}, protocol=2)[:-5], "truncated"),
        (b"this is not a pickle at all", "not a valid pickle"),
    ],
)
def test_broken_pickles_fail_with_one_clear_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=expected) as error:
        load_cifar_batch(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _batch(data: object, labels: object) -> bytes:
    return python2_style_pickle({b"data": data, b"labels": labels})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (python2_style_pickle({b"labels": [1]}), r"missing key b'data'"),
        (_batch(np.zeros((2, 3072), np.float32), [0, 1]), "dtype uint8, found float32"),
        (_batch(np.zeros((2, 1024), np.uint8), [0, 1]), r"shape \(N, 3072\)"),
        (_batch(np.zeros((2, 3072), np.uint8), [0, 10]), "must be in 0–9"),
        (_batch(np.zeros((2, 3072), np.uint8), [0]), "list of 2 integers"),
        (_batch(np.zeros((2, 3072), np.uint8), [0.5, 1.0]), "must be integers"),
        (python2_style_pickle([1, 2, 3]), "expected a dict"),
    ],
)
def test_malformed_batches_are_named(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=expected):
        load_cifar_batch(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({b"data": np.zeros((3, 32, 32, 3), np.uint8), b"ids": np.array([0, 1, 1])}, "unique"),
        ({b"data": np.zeros((3, 32, 32), np.uint8), b"ids": np.arange(3)}, r"\(N, 32, 32, 3\)"),
        (
            {b"data": np.full((3, 32, 32, 3), np.nan), b"ids": np.arange(3)},
            "dtype uint8, found float64",
        ),
        ({b"data": np.zeros((3, 32, 32, 3), np.uint8), b"ids": np.arange(2)}, "list of 3 integers"),
        ({b"data": np.zeros((3, 32, 32, 3), np.uint8)}, "missing key b'ids'"),
        (
            {
                b"data": np.zeros((3, 32, 32, 3), np.uint8),
                b"ids": np.array([0, 1, 2**63], np.uint64),
            },
            "b'ids' must be in 0–9223372036854775807, found 0–9223372036854775808",
        ),
        ({b"data": np.zeros((3, 32, 32, 3), np.uint8), b"ids": np.array([-1, 0, 1])}, "found -1–1"),
    ],
)
def test_malformed_custom_test_is_named(tmp_path: Path, content: dict, expected: str) -> None:
    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(PipelineError, match=expected):
        load_custom_test(path)


def test_written_batch_reads_back(tmp_path: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    write_cifar_batch(tmp_path / "b", images, labels, "x")
    loaded, loaded_labels = load_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(loaded_labels, labels)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_load_from_every_protocol_numpy_writes(tmp_path: Path, protocol: int) -> None:
    """Protocols 2–4 fill arrays through BUILD, 5 through `_frombuffer`; Fortran order and a
    big-endian dtype take numpy's other branches."""
    images = np.asfortranarray(np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), np.uint8))
    ids = np.array([3, 1, 2, 0], dtype=">i8")
    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(pickle.dumps({b"data": images, b"ids": ids}, protocol=protocol))
    loaded_images, loaded_ids = load_custom_test(path)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_ids, ids)


def test_empty_byte_strings_load_from_protocol_2(tmp_path: Path) -> None:
    """Python 3 writes b"" in protocol 2 as a call to builtins.bytes, not as _codecs.encode."""
    images = np.zeros((2, 32, 32, 3), np.uint8)
    write_cifar_batch(tmp_path / "b", images, np.array([0, 1]), batch_label="")
    assert b"bytes" in (tmp_path / "b").read_bytes()
    assert restricted_load(tmp_path / "b")[b"batch_label"] == b""


class _Reduces:
    """Pickles as `call(*args)`, then BUILD `state` if given: numpy's own opcodes, carrying the
    shape, dtype and bytes an attacker picks."""

    def __init__(self, call: object, args: tuple, state: object = None) -> None:
        self.call, self.args, self.state = call, args, state

    def __reduce__(self):
        return (self.call, self.args, self.state)


def _array(shape: tuple, data: bytes | None = None) -> _Reduces:
    """A uint8 array as numpy pickles it, `_reconstruct(ndarray, (0,), 'B')` then BUILD with the
    shape and `data`; without data, only `_reconstruct` declaring the shape."""
    if data is None:
        return _Reduces(np._core.multiarray._reconstruct, (np.ndarray, shape, b"B"))
    state = (1, shape, np.dtype(np.uint8), False, data)
    return _Reduces(np._core.multiarray._reconstruct, (np.ndarray, (0,), b"B"), state)


SHARED_ROWS = b"\x07" * 10 * 3072  # one byte string behind twenty arrays


@pytest.mark.parametrize(
    ("content", "protocol", "expected"),
    [
        (
            {b"data": _array((300_000, 3072))},
            2,
            r"shape \(300000, 3072\) uint8 takes 921,600,000 bytes, more than the whole file",
        ),
        ({b"data": _array((40, 3072)), b"filler": b"\x00" * 200_000}, 2, "data never came"),
        ({b"data": _array((40, 3072), b"\x00" * 100)}, 2, "needs 122,880 bytes, found 100"),
        (
            {b"data": [_array((10, 3072), SHARED_ROWS) for _ in range(20)]},
            2,
            "earlier arrays already took 30,720",
        ),
        (
            {b"ids": [_Reduces(np._core.multiarray.scalar, (np.dtype("V100000000"),))]},
            2,
            r"a numpy scalar of \|V100000000 needs 100,000,000 bytes, found none",
        ),
        (
            {
                b"data": _Reduces(
                    np._core.numeric._frombuffer, (bytearray(10), "u1", (40, 3072), "C")
                )
            },
            5,
            "needs 122,880 bytes, found 10",
        ),
        (
            {
                b"data": _Reduces(
                    codecs.encode, (_Reduces(codecs.encode, (b"\x00" * 99, "hex")), "hex")
                )
            },
            2,
            "_codecs.encode",
        ),
    ],
    ids=["huge-shape", "no-build", "short-bytes", "shared-bytes", "scalar", "frombuffer", "hex"],
)
def test_numpy_objects_without_their_bytes_in_the_file_are_refused(
    tmp_path: Path, content: dict, protocol: int, expected: str
) -> None:
    """numpy's `_reconstruct` allocates whatever shape it is told, uninitialised: every array must
    be filled from bytes of the file, and no more of them than the file holds."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    with pytest.raises(PipelineError, match=rf"data_batch_1: refused: .*{expected}") as error:
        restricted_load(path)
    assert "\n" not in str(error.value)


def _shared_list_bomb(depth: int = 40) -> list:
    """`x = [x, x]` nested `depth` times: `depth` lists in the pickle, 2**depth paths through them."""
    nested: list = []
    for _ in range(depth):
        nested = [nested, nested]
    return nested


def _load_within(seconds: float, load, path: Path) -> object:
    """`load(path)`'s result, or its PipelineError, from a thread given `seconds`."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(load(path))
        except PipelineError as error:
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"{load.__name__} still running after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize(
    ("load", "key", "expected"),
    [
        (load_cifar_batch, b"filenames", None),
        (load_cifar_batch, b"labels", "b'labels' must be integers, found list"),
        (load_class_names, b"label_names", "b'label_names' must be a list of 10 names"),
    ],
)
def test_shared_references_are_walked_once(
    tmp_path: Path, load, key: bytes, expected: str | None
) -> None:
    """Every path through the bomb is 2**40 steps (hours); each object once is 40."""
    content = {
        b"data": np.zeros((2, 3072), np.uint8),
        b"labels": [0, 1],
        b"label_names": [b"x"] * 10,
    }
    content[key] = _shared_list_bomb()
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_style_pickle(content))
    outcome = _load_within(20, load, path)
    if expected is None:
        assert not isinstance(outcome, PipelineError), outcome
    else:
        assert isinstance(outcome, PipelineError) and expected in str(outcome)


def _text(text: str) -> bytes:
    """BINUNICODE: how protocol 2 writes a str."""
    return pickle.BINUNICODE + struct.pack("<I", len(text.encode())) + text.encode()


def test_memo_index_beyond_the_file_is_refused(tmp_path: Path) -> None:
    """The C unpickler sizes its memo table to twice the largest LONG_BINPUT index: 2**22 in a
    9-byte file would take 64 MB (2**26, 1 GB). A pickler numbers its memo 0, 1, 2, …"""
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        b"\x80\x02"
        + pickle.EMPTY_DICT
        + pickle.LONG_BINPUT
        + struct.pack("<I", 2**22)
        + pickle.STOP
    )
    with pytest.raises(
        PipelineError, match=r"data_batch_1: refused: a memo index of 4,194,304"
    ) as error:
        restricted_load(path)
    assert "\n" not in str(error.value)


def test_one_text_encoded_again_and_again_is_refused(tmp_path: Path) -> None:
    """`_codecs.encode(text, 'latin1')` called 40 times on one 64 KiB text in the memo: 2.6 MB of
    byte strings from a 66 KB file (300 calls on 1 MiB: 300 MB from 1 MB)."""
    call = pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.BINGET + b"\x02"
    call += pickle.TUPLE2 + pickle.REDUCE
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        b"\x80\x02c_codecs\nencode\n"
        + pickle.BINPUT + b"\x00" + _text("a" * 65536) + pickle.BINPUT + b"\x01"
        + _text("latin1") + pickle.BINPUT + b"\x02" + pickle.POP
        + pickle.EMPTY_LIST + pickle.MARK + call * 40 + pickle.APPENDS + pickle.STOP
    )  # fmt: skip
    with pytest.raises(PipelineError, match=r"data_batch_1: refused: .*encoded again and again"):
        restricted_load(path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("V", "no size"), ("S0", "no size"), ("i4,i4", "structured"), ("(2,)u1", "structured")],
)
def test_dtypes_without_one_plain_size_are_refused(
    tmp_path: Path, code: str, expected: str
) -> None:
    """A dtype whose items have no size, fields or a subarray is one a later BUILD state can give
    any size and offsets: no numeric array the competition ships needs one."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps([_Reduces(np.dtype, (code, False, True))], protocol=2))
    with pytest.raises(PipelineError, match=rf"data_batch_1: refused: .*{expected}"):
        restricted_load(path)


def _dtype_ops(code: str, state: bytes) -> bytes:
    """`numpy.dtype(code, False, True)` as numpy pickles it, then BUILD with `state`'s opcodes."""
    call = b"cnumpy\ndtype\n" + _text(code) + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3
    return call + pickle.REDUCE + pickle.BINPUT + b"\x00" + state + pickle.BUILD


def _dtype_state(elsize: bytes, names: bytes = pickle.NONE, fields: bytes = pickle.NONE) -> bytes:
    """numpy's dtype state (3, '|', subarray, names, fields, elsize, alignment, flags)."""
    return (
        pickle.MARK + b"K\x03" + _text("|") + pickle.NONE + names + fields + elsize + b"K\x01K\x00t"
    )


NO_SIZE = b"K\x00"  # BININT1 0
BUILTIN_SIZE = b"J\xff\xff\xff\xff"  # BININT -1: numpy's builtin types keep their own

F0_NAMES = _text("f0") + pickle.TUPLE1  # names ('f0',)
F0_AT_1GB = (
    pickle.EMPTY_DICT + _text("f0") + b"cnumpy\ndtype\n" + _text("u1") + pickle.NEWFALSE
    + pickle.NEWTRUE + pickle.TUPLE3 + pickle.REDUCE + pickle.BININT + struct.pack("<i", 10**9)
    + pickle.TUPLE2 + pickle.SETITEM
)  # fmt: skip  # fields {'f0': (dtype('u1'), 10**9)}: one byte, a gigabyte past the item


def _array_then_dtype_build(code: str, elsize: bytes, data: bytes, late_state: bytes) -> bytes:
    """An array of 1000 `code` items over `data`, as numpy pickles it, and afterwards another
    BUILD on its dtype (memo 0): the array was checked against the dtype before it changed."""
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"K\x00\x85C\x01B\x87R"  # _reconstruct(ndarray, (0,), b'B')
        + pickle.MARK + b"K\x01M\xe8\x03\x85" + _dtype_ops(code, _dtype_state(elsize))
        + pickle.NEWFALSE + pickle.BINBYTES + struct.pack("<I", len(data)) + data
        + pickle.TUPLE + pickle.BUILD  # (1, (1000,), dtype, False, data)
        + pickle.BINGET + b"\x00" + late_state + pickle.BUILD + pickle.POP + pickle.STOP
    )  # fmt: skip


@pytest.mark.parametrize(
    "content",
    [
        _array_then_dtype_build("V0", NO_SIZE, b"", _dtype_state(b"K\x08")),
        _array_then_dtype_build(
            "u1", BUILTIN_SIZE, b"\x00" * 1000, _dtype_state(BUILTIN_SIZE, F0_NAMES, F0_AT_1GB)
        ),
    ],
    ids=["void-grows-to-8-bytes-an-item-over-none", "uint8-gains-a-field-a-gigabyte-in"],
)
def test_a_dtype_cannot_change_after_its_array_was_checked(tmp_path: Path, content: bytes) -> None:
    """numpy's `dtype(code, False, True)` is a copy that any later BUILD reshapes: an array whose
    bytes were counted against 0 bytes an item would read 8,000 (a segfault)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=r"data_batch_1: refused: ") as error:
        restricted_load(path)
    assert "\n" not in str(error.value)


def test_an_array_from_its_buffer_takes_no_build_state(tmp_path: Path) -> None:
    """numpy's own BUILD on a `_frombuffer` array (protocol 5) re-shapes it over any byte string
    of the file, copying it to swap the byte order: 20 empty arrays each given one 64 KiB string
    would be 1.3 MB from a 66 KB file (1 MiB a hundred times: 100 MB)."""
    rows = b"\x01" * 65536
    swapped = (1, (32768,), np.dtype(">u2"), False, rows)
    empty = _Reduces(np._core.numeric._frombuffer, (b"", np.dtype("u1"), (0,), "C"), swapped)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": [empty] * 20}, protocol=2))
    with pytest.raises(PipelineError, match=r"data_batch_1: refused: an array filled twice"):
        restricted_load(path)


NUMERIC_ARRAYS = {
    b"uint8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    b"int64-big-endian": np.array([3, -1, 2**40], dtype=">i8"),
    b"float32-fortran": np.asfortranarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)),
    b"float64": np.array([np.pi, -0.0, np.inf]),
    b"complex128": np.array([1 + 2j]),
    b"bool": np.array([True, False]),
    b"datetime64-seconds": np.array(["2025-01-01T00:00:01"], dtype="M8[s]"),
    b"timedelta64-3ms-big-endian": np.array([5], dtype=">m8[3ms]"),
    b"empty": np.zeros((0, 3072), np.uint8),
}


@pytest.mark.parametrize("protocol", range(6))
def test_numeric_arrays_load_from_protocols_0_to_5(tmp_path: Path, protocol: int) -> None:
    """As numpy's own unpickling gives them: the same values, dtypes (a big-endian one comes back
    native) and memory order."""
    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(pickle.dumps(NUMERIC_ARRAYS, protocol=protocol))
    loaded, expected = restricted_load(path), pickle.loads(path.read_bytes())
    assert set(loaded) == set(NUMERIC_ARRAYS)
    for name, array in expected.items():
        assert loaded[name].dtype.str == array.dtype.str, name
        assert loaded[name].flags.f_contiguous == array.flags.f_contiguous, name
        np.testing.assert_array_equal(loaded[name], NUMERIC_ARRAYS[name])


class _Python2StrPickler(Python2StylePickler):
    """Python 2 also wrote its text (numpy's type codes 'u1', byte orders '|') as byte strings:
    the official batches' dtype states load as b'|', not '|'."""

    def save_str(self, obj: str) -> None:
        text = obj.encode("latin1")
        self.write(pickle.SHORT_BINSTRING + bytes([len(text)]) + text)  # all shorter than 256
        self.memoize(obj)

    dispatch = dict(Python2StylePickler.dispatch)
    dispatch[str] = save_str


def test_dtype_states_written_as_python_2_byte_strings_load(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _Python2StrPickler(buffer, protocol=2).dump(NUMERIC_ARRAYS)
    assert b"X\x01\x00\x00\x00|" not in buffer.getvalue()  # no BINUNICODE '|' left
    path = tmp_path / "data_batch_1"
    path.write_bytes(buffer.getvalue())
    loaded = restricted_load(path)
    expected = pickle.loads(buffer.getvalue(), encoding="bytes")
    for name, array in expected.items():
        assert loaded[name].dtype.str == array.dtype.str, name
        np.testing.assert_array_equal(loaded[name], NUMERIC_ARRAYS[name])
