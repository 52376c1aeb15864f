"""The numpy-only TF1 checkpoint reader against bundles TensorFlow 2.14 wrote
(``tests/reference/make_tf_checkpoint_fixtures.py``, committed in ``fixtures/tf_checkpoint``), and
the files it must refuse: corrupt, truncated, a missing shard, unsafe archive members, PyTorch."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch

from superanimal_jax.checkpoints.tf_checkpoint import crc32c, read_tf_checkpoint, unmask
from superanimal_jax.errors import CheckpointError

from conftest import FIXTURES, run_reference_script

GOLDENS = ('tf_checkpoint/versions.json',)  # The versions the goldens were made with (conftest).
TF = FIXTURES / 'tf_checkpoint'


def expected(folder=TF) -> dict[str, np.ndarray]:
    with np.load(folder / 'expected.npz') as g:
        return {k.replace('|', '/'): g[k] for k in g.files}


def assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
        assert ours[name].tobytes() == value.tobytes(), name  # Bit for bit (NaN payloads included).
        assert ours[name].flags.c_contiguous and ours[name].flags.writeable and ours[name].flags.owndata


def bundle_copy(tmp_path):
    for name in ('snapshot-7.index', 'snapshot-7.data-00000-of-00001'):
        shutil.copy(TF / name, tmp_path / name)
    return tmp_path / 'snapshot-7'


def test_crc32c_known_values():
    assert crc32c(b'123456789') == 0xE3069283  # The standard check value.
    assert crc32c(b'') == 0
    data = np.random.default_rng(0).integers(0, 256, 3 * 4096 + 17, dtype=np.uint8)
    assert crc32c(data) == crc32c(data.tobytes()) == crc32c(memoryview(data.tobytes()))
    assert crc32c(data[:-1]) != crc32c(data)
    masked = ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xA282EAD8
    assert unmask(masked & 0xFFFFFFFF) == 0xE3069283


@pytest.mark.parametrize('form', ['prefix', 'index', 'tar.gz'])
def test_reads_what_tensorflow_wrote(form):
    path = {'prefix': TF / 'snapshot-7', 'index': TF / 'snapshot-7.index',
            'tar.gz': TF / 'snapshot-7.tar.gz'}[form]
    tensors, info = read_tf_checkpoint(path)
    assert_same(tensors, expected())
    assert info['prefix'] == 'snapshot-7' and info['num_shards'] == 1
    # Over 100 tensors: the index spans several blocks.
    assert len(tensors) == json.loads((TF / 'versions.json').read_text())['tensors'] > 100
    if form == 'tar.gz':
        assert info['pose_cfg.yaml'].startswith(b'net_type: resnet_50')


@pytest.mark.parametrize('name,at,message', [
    ('snapshot-7.data-00000-of-00001', 100, 'fails its crc32c check'),  # A tensor's bytes.
    ('snapshot-7.index', 40, 'block at 0 fails its checksum'),  # The first index block.
])
def test_a_flipped_bit_is_caught(tmp_path, name, at, message):
    prefix = bundle_copy(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[at] ^= 0x01
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=message):
        read_tf_checkpoint(prefix)


def test_truncated_files_are_refused(tmp_path):
    prefix = bundle_copy(tmp_path)
    data = tmp_path / 'snapshot-7.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match='past the end of its data shard'):
        read_tf_checkpoint(prefix)
    index = tmp_path / 'snapshot-7.index'
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match='index'):
        read_tf_checkpoint(prefix)
    archive = tmp_path / 'cut.tar.gz'
    archive.write_bytes((TF / 'snapshot-7.tar.gz').read_bytes()[:2000])
    with pytest.raises(CheckpointError, match='cut.tar.gz'):
        read_tf_checkpoint(archive)


def test_missing_shard_is_named(tmp_path):
    prefix = bundle_copy(tmp_path)
    (tmp_path / 'snapshot-7.data-00000-of-00001').unlink()
    with pytest.raises(CheckpointError, match='missing data shard snapshot-7.data-00000-of-00001'):
        read_tf_checkpoint(prefix)
    with pytest.raises(FileNotFoundError, match='snapshot-9'):
        read_tf_checkpoint(tmp_path / 'snapshot-9')


def test_shards_of_another_bundle_are_ignored(tmp_path):
    prefix = bundle_copy(tmp_path)
    (tmp_path / 'snapshot-7.data-00000-of-00002').write_bytes(b'a stale shard of a 2-shard save')
    assert_same(read_tf_checkpoint(prefix)[0], expected())


def archive_with(tmp_path, name: str, member: tarfile.TarInfo, data: bytes = b'') -> object:
    path = tmp_path / name
    with tarfile.open(path, 'w:gz') as archive:
        for source in ('snapshot-7.index', 'snapshot-7.data-00000-of-00001'):
            archive.add(TF / source, arcname=source)
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize('case', ['absolute', 'parent', 'symlink', 'hardlink'])
def test_unsafe_archive_members_are_refused(tmp_path, case):
    member = tarfile.TarInfo({'absolute': '/etc/evil', 'parent': '../evil'}.get(case, 'evil'))
    if case == 'symlink':
        member.type, member.linkname = tarfile.SYMTYPE, '/etc/passwd'
    elif case == 'hardlink':
        member.type, member.linkname = tarfile.LNKTYPE, 'snapshot-7.index'
    else:
        member.size = 4
    path = archive_with(tmp_path, f'{case}.tar.gz', member, b'evil')
    with pytest.raises(CheckpointError, match='refuses'):
        read_tf_checkpoint(path)
    assert not (tmp_path.parent / 'evil').exists()


def test_other_files_are_refused(tmp_path):
    torch.save({'model': {'w': torch.zeros(2)}}, tmp_path / 'weights.pt')
    with pytest.raises(CheckpointError, match='PyTorch'):
        read_tf_checkpoint(tmp_path / 'weights.pt')
    (tmp_path / 'x.index').write_bytes(b'not an index at all, but long enough to have a footer' * 2)
    with pytest.raises(CheckpointError, match='not a TensorFlow checkpoint index'):
        read_tf_checkpoint(tmp_path / 'x.index')
    empty = tmp_path / 'empty.tar.gz'
    with tarfile.open(empty, 'w:gz') as archive:
        info = tarfile.TarInfo('pose_cfg.yaml')
        info.size = 3
        archive.addfile(info, io.BytesIO(b'a: 1'))
    with pytest.raises(CheckpointError, match='no \\*.index member'):
        read_tf_checkpoint(empty)


@pytest.mark.reference
def test_live_pose_resnet_sized_checkpoint(tmp_path):
    """TensorFlow writes a checkpoint with PoseResnet-50's 269 tensors (about 100 MB); every tensor
    read here equals ``tf.train.load_checkpoint``'s bit for bit, loose and as .tar.gz."""
    run_reference_script('make_tf_checkpoint_fixtures.py', tmp_path, '--large', python='.ref-tf')
    theirs = expected(tmp_path)
    assert len(theirs) == 269
    for path in (tmp_path / 'snapshot-7', tmp_path / 'snapshot-7.tar.gz'):
        assert_same(read_tf_checkpoint(path)[0], theirs)
