"""Tests for the torch-free checkpoint reader, against files written by real ``torch.save``."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from superanimal_jax.checkpoints.torch_file import read_checkpoint
from superanimal_jax.errors import CheckpointError, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[1]


def _save(obj, path: Path, **kwargs) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_same(loaded: np.ndarray, t: torch.Tensor) -> None:
    assert isinstance(loaded, np.ndarray)
    assert loaded.shape == tuple(t.shape)
    assert loaded.flags.c_contiguous and loaded.flags.owndata and loaded.flags.writeable
    got = loaded.astype(np.float32) if t.dtype == torch.bfloat16 else loaded
    if t.dtype != torch.bfloat16:
        assert loaded.dtype == t.numpy().dtype
    np.testing.assert_array_equal(got, _as_numpy(t))


def _rewrite_zip(src: Path, dst: Path, drop=(), replace=None) -> Path:
    """Copy a zip, leaving out records whose name ends with one of ``drop``; ``replace`` maps
    suffix -> bytes."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            if any(name.endswith(d) for d in drop):
                continue
            new = next((v for k, v in replace.items() if name.endswith(k)), None)
            zout.writestr(name, zin.read(name) if new is None else new)
    return dst


def _mixed_state_dict() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(0)
    return collections.OrderedDict(
        weight=torch.randn(4, 3, 3, 3, generator=g),
        half=torch.randn(5, generator=g).half(),
        bf16=torch.randn(2, 7, generator=g).bfloat16(),
        num_batches_tracked=torch.tensor(12345678901, dtype=torch.int64),
        mask=torch.tensor([True, False, True]),
        pixels=torch.arange(250, 256, dtype=torch.uint8).reshape(2, 3),
    )


def test_state_dict_dtypes_round_trip(tmp_path):
    sd = _mixed_state_dict()
    loaded = read_checkpoint(_save(sd, tmp_path / "mixed.pt"))
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(sd)
    for key, t in sd.items():
        _assert_same(loaded[key], t)
    assert loaded["num_batches_tracked"].shape == ()
    assert loaded["bf16"].dtype.name == "bfloat16"


def test_nested_dict_with_numpy_scalar_metadata(tmp_path):
    model = collections.OrderedDict(w=torch.ones(2, 2), b=torch.zeros(2))
    obj = {"model": model, "metadata": {"epoch": 3, "metrics": {"x": np.float64(0.5), "n": np.int32(-7)}},
           "name": "snapshot", "pair": (1, 2.5), "tags": ["a", None],
           "dtypes": (np.dtype("f8"), np.dtype(">i2"))}
    loaded = read_checkpoint(_save(obj, tmp_path / "nested.pt"))
    for key, t in model.items():
        _assert_same(loaded["model"][key], t)
    assert loaded["metadata"]["epoch"] == 3
    x, n = loaded["metadata"]["metrics"]["x"], loaded["metadata"]["metrics"]["n"]
    assert type(x) is np.float64 and x == 0.5
    assert type(n) is np.int32 and n == -7
    assert loaded["name"] == "snapshot" and loaded["pair"] == (1, 2.5) and loaded["tags"] == ["a", None]
    assert all(isinstance(d, np.dtype) for d in loaded["dtypes"])
    assert loaded["dtypes"] == (np.dtype("<f8"), np.dtype(">i2"))


def test_views_sharing_one_storage(tmp_path, monkeypatch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"base": base, "t": base.t(), "cols": base[1:, ::2], "elem": base[2, 3], "row": base[3]}
    assert not views["t"].is_contiguous() and not views["cols"].is_contiguous()
    path = _save(views, tmp_path / "views.pt")

    reads = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, *a: reads.append(name) or real_read(self, name, *a))
    loaded = read_checkpoint(path)
    assert sum("/data/" in n for n in reads) == 1  # the shared storage is read once

    for key, t in views.items():
        _assert_same(loaded[key], t)
    loaded["base"][0, 0] = -1.0  # each array is its own copy
    assert loaded["t"][0, 0] == 0.0


def test_module_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(4, 2))
    net(torch.randn(2, 3, 6, 6))  # train-mode forward: running stats and num_batches_tracked change
    sd = net.state_dict()
    loaded = read_checkpoint(_save(sd, tmp_path / "net.pt"))
    assert list(loaded) == list(sd)
    for key, t in sd.items():
        _assert_same(loaded[key], t)
    assert loaded._metadata == sd._metadata


def test_parameter_round_trip(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    loaded = read_checkpoint(_save({"p": p}, tmp_path / "param.pt"))
    _assert_same(loaded["p"], p.detach())


def test_big_endian_byteorder_is_swapped(tmp_path):
    tensors = {"f": torch.randn(3, 2), "l": torch.tensor([1, -2, 2**40]), "bf": torch.randn(4).bfloat16()}
    little = _save(tensors, tmp_path / "little.pt")
    swapped = {f"/data/{i}": (t.view(torch.int16) if t.dtype == torch.bfloat16
                              else t).numpy().byteswap().tobytes()
               for i, t in enumerate(tensors.values())}
    swapped["/byteorder"] = b"big"
    loaded = read_checkpoint(_rewrite_zip(little, tmp_path / "big.pt", replace=swapped))
    for key, t in tensors.items():
        _assert_same(loaded[key], t)


def test_truncated_file(tmp_path):
    good = _save(_mixed_state_dict(), tmp_path / "good.pt")
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt") as info:
        read_checkpoint(bad)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_missing_data_record(tmp_path):
    good = _save(_mixed_state_dict(), tmp_path / "good.pt")
    bad = _rewrite_zip(good, tmp_path / "no_record.pt", drop=["/data/2"])
    with pytest.raises(CheckpointError, match=r"no_record\.pt.*data/2"):
        read_checkpoint(bad)


def test_missing_data_pkl(tmp_path):
    good = _save(_mixed_state_dict(), tmp_path / "good.pt")
    bad = _rewrite_zip(good, tmp_path / "no_pickle.pt", drop=["/data.pkl"])
    with pytest.raises(CheckpointError, match=r"no_pickle\.pt.*data\.pkl"):
        read_checkpoint(bad)


def test_short_storage_record(tmp_path):
    good = _save({"w": torch.ones(10)}, tmp_path / "good.pt")
    bad = _rewrite_zip(good, tmp_path / "short.pt", replace={"/data/0": b"\0" * 12})
    with pytest.raises(CheckpointError, match=r"short\.pt.*12 bytes"):
        read_checkpoint(bad)


def test_view_exceeding_storage(tmp_path):
    good = _save({"w": torch.arange(10.0)[2:]}, tmp_path / "good.pt")
    with zipfile.ZipFile(good) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert pkl.count(b"QK\x02") == 1  # BINPERSID, then storage_offset 2 as BININT1
    bad = _rewrite_zip(good, tmp_path / "overrun.pt",
                       replace={"/data.pkl": pkl.replace(b"QK\x02", b"QK\x03")})
    with pytest.raises(CheckpointError, match=r"overrun\.pt.*exceeds storage"):
        read_checkpoint(bad)


def _pickle_str(text: str) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


def test_pickled_state_cannot_replace_a_storage(tmp_path):
    # Hand-written protocol-2 pickle: a storage persistent id, then BUILD (None, {"array": 1}) on it.
    pid = (b"(" + _pickle_str("storage") + b"ctorch\nFloatStorage\n" + _pickle_str("0") + _pickle_str("cpu")
           + b"K\x02t")
    pkl = b"\x80\x02" + pid + b"QN}" + _pickle_str("array") + b"K\x01s\x86b."
    path = tmp_path / "build.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("build/data.pkl", pkl)
        z.writestr("build/data/0", np.ones(2, np.float32).tobytes())
    with pytest.raises(CheckpointError, match=r"build\.pt.*no pickled state"):
        read_checkpoint(path)


def test_legacy_format_is_rejected(tmp_path):
    path = _save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy\.pt.*legacy.*torch>=1\.6"):
        read_checkpoint(path)


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = _save({"w": torch.ones(2), "evil": _Evil(f"touch {marker}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pt.*'{os.system.__module__}\.system'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_numpy_array_in_metadata_is_refused(tmp_path):
    path = _save({"meta": np.arange(3)}, tmp_path / "ndarray.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"refuses to load global 'numpy\."):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(missing)


def test_module_does_not_import_torch():
    code = "import sys, superanimal_jax.checkpoints.torch_file; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
