"""Read ``torch.save`` zip checkpoints (torch >= 1.6) without torch and without running code from the file.

``data.pkl`` is unpickled with an explicit allow-list of globals, each mapped to a function defined here;
storages come from the ``data/<key>`` records and tensors become owned, C-contiguous numpy arrays.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np

from superanimal_jax.errors import CheckpointError, UnsafeCheckpointError

_STORAGE_DTYPES = {  # torch.<X>Storage -> element dtype
    f"{name}Storage": np.dtype(t) for name, t in dict(
        Double=np.float64, Float=np.float32, Half=np.float16, BFloat16=ml_dtypes.bfloat16, Long=np.int64,
        Int=np.int32, Short=np.int16, Char=np.int8, Byte=np.uint8, Bool=np.bool_).items()
}
_SCALAR_KINDS = "biufc"  # numpy scalar kinds accepted in metadata: bool, int, uint, float, complex


class _Frozen:
    """Base of the internal markers: BUILD must not be able to swap their fields."""

    __slots__ = ()

    def __setstate__(self, state):
        raise TypeError(f"{type(self).__name__.lstrip('_')} objects take no pickled state")


class _StorageType(_Frozen):
    """What ``torch.<X>Storage`` resolves to: a marker carrying the element dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage(_Frozen):
    """One ``data/<key>`` record as a flat, native-order, read-only 1-D array."""

    __slots__ = ("key", "array")

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _OrderedDict(collections.OrderedDict):
    """Stand-in for ``collections.OrderedDict`` that accepts plain attributes (``_metadata``) via BUILD."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError("OrderedDict state must be a dict")
        for name, value in state.items():
            if not isinstance(name, str) or name.startswith("__"):
                raise TypeError(f"OrderedDict attribute {name!r} is not allowed")
            setattr(self, name, value)


class _NumpyDType:
    """Stand-in for ``numpy.dtype(spec, align, copy)``; only simple numeric dtypes, for numpy scalars."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise TypeError(f"numpy dtype spec must be a string, got {type(spec).__name__}")
        dtype = np.dtype(spec)
        if dtype.kind not in _SCALAR_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise TypeError(f"numpy dtype {spec!r} is not a plain numeric dtype")
        self.dtype = dtype

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise TypeError("unsupported numpy dtype state")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])
        elif state[1] not in ("|", "="):
            raise TypeError(f"bad numpy byte order {state[1]!r}")


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise TypeError("numpy scalar needs a numeric dtype and bytes")
    if len(data) != dtype.dtype.itemsize:
        raise TypeError(f"numpy scalar of {dtype.dtype} needs {dtype.dtype.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype.dtype)[0]


def _resolve_dtypes(obj, seen: dict):
    """Swap standalone ``_NumpyDType`` markers for real dtypes; ``seen``: id -> (original, result)."""
    if isinstance(obj, _NumpyDType):
        return obj.dtype
    if not isinstance(obj, (list, dict, tuple)):
        return obj
    if id(obj) in seen:
        return seen[id(obj)][1]
    seen[id(obj)] = (obj, obj)
    if isinstance(obj, tuple):
        seen[id(obj)] = (obj, tuple(_resolve_dtypes(v, seen) for v in obj))
        return seen[id(obj)][1]
    for k, v in list(obj.items() if isinstance(obj, dict) else enumerate(obj)):
        obj[k] = _resolve_dtypes(v, seen)
    return obj


def _latin1_encode(text, encoding):
    """``_codecs.encode`` as protocol-2 pickles use it to carry bytes (``str`` -> latin-1 ``bytes``)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode is only allowed for (str, 'latin1')")
    return text.encode("latin1")


def _as_index_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise TypeError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` -> an owned C-contiguous copy of the strided view."""
    if not isinstance(storage, _Storage):
        raise TypeError("tensor is not backed by a storage record")
    size, stride = _as_index_tuple(size, "size"), _as_index_tuple(stride, "stride")
    if len(size) != len(stride) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise TypeError(f"bad tensor layout: offset {storage_offset!r}, size {size}, stride {stride}")
    flat = storage.array
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise ValueError(
                f"tensor view (offset {storage_offset}, size {size}, stride {stride}) exceeds storage "
                f"'{storage.key}' of {flat.size} elements")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[storage_offset:], shape=size, strides=[s * item for s in stride], writeable=False)
    else:
        view = np.empty(size, flat.dtype)
    return np.array(view, order="C", copy=True)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """``torch._utils._rebuild_parameter`` -> the tensor data itself."""
    if not isinstance(data, np.ndarray):
        raise TypeError("parameter data is not a tensor")
    return data


def _counter(mapping=None):
    """``collections.Counter`` as pickled (``Counter(dict)``), e.g. a MultiStepLR's ``milestones``."""
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Counter state must be a dict")
    return collections.Counter(mapping or {})


_ALLOWED = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("collections", "Counter"): _counter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _NumpyDType,
    ("_codecs", "encode"): _latin1_encode,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._path = archive, prefix, path
        self._swap = byteorder != sys.byteorder
        self._storages: dict[tuple[str, str], _Storage] = {}
        self.saw_dtype = False

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"{self._path}: unsupported storage type 'torch.{name}'")
        self.saw_dtype |= (module, name) == ("numpy", "dtype")
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise UnsafeCheckpointError(
            f"{self._path}: refuses to load global '{module}.{name}' (not on the allow-list)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self._path}: bad storage reference {pid!r:.80}")
        dtype = storage_type.dtype
        cached = self._storages.get((key, dtype.name))
        if cached is None:
            cached = self._storages[key, dtype.name] = _Storage(key, self._read_storage(key, dtype, numel))
        return cached

    def _read_storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        raw = _read_record(self._archive, f"{self._prefix}data/{key}", self._path)
        if len(raw) < numel * dtype.itemsize:
            raise CheckpointError(
                f"{self._path}: storage 'data/{key}' has {len(raw)} bytes, expected "
                f"{numel * dtype.itemsize} ({numel} x {dtype})")
        array = np.frombuffer(raw, dtype, count=numel)
        if self._swap and dtype.itemsize > 1:
            array = array.byteswap()  # a swapped native-order copy
            array.flags.writeable = False
        return array


def _read_record(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise CheckpointError(f"{path}: missing record '{name}' (truncated or corrupt checkpoint)") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read record '{name}': {exc}") from exc


def read_checkpoint(path) -> object:
    """Unpickle a torch.save zip file; tensors become C-contiguous numpy arrays (own memory, writeable)."""
    path = os.fspath(path)
    with open(path, "rb") as f:  # FileNotFoundError names the path
        head = f.read(4)
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{path}: legacy (non-zip) torch.save format is not supported; "
                "re-save it with torch>=1.6 (default zip serialization)")
        if head[:2] != b"PK":
            raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (no zip header)")
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt zip file: {exc}") from exc
        with archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                problem = "missing data.pkl" if not pickles else "several top-level data.pkl records"
                raise CheckpointError(f"{path}: {problem}; not a torch.save zip checkpoint")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in archive.NameToInfo:
                byteorder = _read_record(archive, f"{prefix}byteorder", path).decode(
                    "ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")
            data = _read_record(archive, pickles[0], path)
            unpickler = _Unpickler(data, archive, prefix, byteorder, path)
            try:
                result = unpickler.load()
                return _resolve_dtypes(result, {}) if unpickler.saw_dtype else result
            except CheckpointError:
                raise
            except (TypeError, ValueError) as exc:  # an allowed callable rejected its arguments
                raise CheckpointError(f"{path}: invalid checkpoint content: {exc}") from exc
            except Exception as exc:  # malformed pickle stream
                raise CheckpointError(f"{path}: corrupt data.pkl ({type(exc).__name__}: {exc})") from exc
