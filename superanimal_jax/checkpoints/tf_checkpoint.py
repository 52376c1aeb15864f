"""Read TensorFlow 1 checkpoint bundles with numpy only, never running anything from the file.

A bundle is ``<prefix>.index`` (a LevelDB-style sorted table whose values are
``BundleEntryProto`` messages: dtype, shape, shard, offset, size, crc32c) and
``<prefix>.data-NNNNN-of-MMMMM`` shards of raw tensor bytes.  Every block checksum of the index and
every tensor's crc32c is verified.  The released DLCRNet ``.tar.gz`` is read as it is, members in
memory, by base name, without trusting their paths.  Format notes: docs/parity/tf_checkpoint.md.
"""

from __future__ import annotations

import math
import os
import re
import tarfile
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from superanimal_jax.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, the footer's last 8 bytes.
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked crc32c.
# TensorFlow's DataType enum -> numpy (DT_STRING and the quantised/resource types are refused).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 14: ml_dtypes.bfloat16, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}


# ---------------------------------------------------------------------------------------------
# crc32c (Castagnoli), vectorised over chunks so a 100 MB tensor checks in well under a second
# ---------------------------------------------------------------------------------------------

def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc_table()
_CHUNK = 4096


def _advance(register: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Registers ``(M,)`` after the bytes ``data (M, L)`` (one row per register), no final xor."""
    for j in range(data.shape[1]):
        register = _TABLE[(register ^ data[:, j]) & 0xFF] ^ (register >> 8)
    return register


def _zero_shift_tables(length: int) -> np.ndarray:
    """``(4, 256)`` tables of the linear map 'run ``length`` zero bytes through the register',
    one table per register byte."""
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    shifted = _advance(basis, np.zeros((32, length), np.uint8))
    tables = np.zeros((4, 256), np.uint32)
    for k in range(4):
        for bit in range(8):
            tables[k] ^= np.where((np.arange(256) >> bit) & 1, shifted[8 * k + bit], 0).astype(np.uint32)
    return tables


_SHIFT = _zero_shift_tables(_CHUNK)


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """The crc32c of ``data``."""
    if isinstance(data, np.ndarray):
        buf = data.reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data, np.uint8)
    whole = len(buf) // _CHUNK
    register = 0xFFFFFFFF
    if whole:
        parts = _advance(np.zeros(whole, np.uint32), buf[:whole * _CHUNK].reshape(whole, _CHUNK))
        for part in parts.tolist():  # raw(s, A + B) = shift(raw(s, A), |B|) ^ raw(0, B)
            register = (int(_SHIFT[0, register & 0xFF]) ^ int(_SHIFT[1, (register >> 8) & 0xFF])
                        ^ int(_SHIFT[2, (register >> 16) & 0xFF]) ^ int(_SHIFT[3, register >> 24]) ^ part)
    tail = buf[whole * _CHUNK:]
    if len(tail):
        register = int(_advance(np.array([register], np.uint32), tail[None])[0])
    return register ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """LevelDB's stored crc: ``rotate_right(crc, 15) + 0xa282ead8``, undone."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Varints, protobuf fields, table blocks
# ---------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f'bad varint in {what}')
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, what: str, expected: dict[int, int] | None = None):
    """``(field number, wire type, value)`` of a protobuf message (values: int or bytes); a field
    of ``expected`` (number -> wire type) arriving with another wire type is an error."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], 'little'), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos, what)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], 'little'), pos + 4
        else:
            raise CheckpointError(f'unsupported protobuf wire type {wire} in {what}')
        if pos > len(buf):
            raise CheckpointError(f'truncated protobuf message in {what}')
        if expected and number in expected and expected[number] != wire:
            raise CheckpointError(f'{what}: field {number} has wire type {wire}, expected {expected[number]} '
                                  '(corrupt or not a checkpoint index)')
        yield number, wire, value


def _block(index: bytes, offset: int, size: int, source: str) -> bytes:
    """One table block, its trailer checked (no compression, crc32c of contents + type byte)."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(index):
        raise CheckpointError(f'{source}: block at {offset} (+{size}) runs past the end of the index '
                              f'({len(index)} bytes): truncated or corrupt')
    contents, kind = index[offset:offset + size], index[offset + size]
    stored = int.from_bytes(index[offset + size + 1:end], 'little')
    if crc32c(index[offset:offset + size + 1]) != unmask(stored):
        raise CheckpointError(f'{source}: block at {offset} fails its checksum (corrupt index)')
    if kind != 0:
        raise CheckpointError(f'{source}: compressed table blocks (type {kind}) are not supported')
    return contents


def _entries(block: bytes, source: str):
    """``(key, value)`` of a table block (prefix-compressed keys, restart array at the end)."""
    if len(block) < 4:
        raise CheckpointError(f'{source}: table block too short')
    restarts = int.from_bytes(block[-4:], 'little')
    limit = len(block) - 4 * (restarts + 1)
    if limit < 0:
        raise CheckpointError(f'{source}: bad restart count {restarts} in a table block')
    pos, key = 0, b''
    while pos < limit:
        shared, pos = _varint(block, pos, source)
        unshared, pos = _varint(block, pos, source)
        size, pos = _varint(block, pos, source)
        if shared > len(key) or pos + unshared + size > limit:
            raise CheckpointError(f'{source}: corrupt table entry')
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + size]
        pos += size


def _handle(value: bytes, source: str) -> tuple[int, int]:
    offset, pos = _varint(value, 0, source)
    size, _ = _varint(value, pos, source)
    return offset, size


def read_index(index: bytes, source: str = 'index') -> dict[bytes, bytes]:
    """Every ``key -> value`` of a checkpoint's ``.index`` table, in key order."""
    if len(index) < FOOTER_SIZE:
        raise CheckpointError(f'{source}: {len(index)} bytes is too short for a checkpoint index '
                              '(truncated?)')
    footer = index[-FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], 'little') != TABLE_MAGIC:
        raise CheckpointError(f'{source}: not a TensorFlow checkpoint index (no table magic number)')
    _, pos = _varint(footer, 0, source)  # The metaindex block's handle (offset, size): its block
    _, pos = _varint(footer, pos, source)  # is empty in TensorFlow's bundles.
    index_offset, pos = _varint(footer, pos, source)
    index_size, _ = _varint(footer, pos, source)
    table, end = {}, 0
    for _, handle in _entries(_block(index, index_offset, index_size, source), source):
        offset, size = _handle(handle, source)
        if offset < end or offset + size > index_offset:  # Data blocks: in order, apart, before the index.
            raise CheckpointError(f'{source}: data block handle ({offset}, {size}) out of order or '
                                  'overlapping (corrupt index)')
        end = offset + size + BLOCK_TRAILER_SIZE
        for key, value in _entries(_block(index, offset, size, source), source):
            table[key] = value
    return table


# ---------------------------------------------------------------------------------------------
# Bundle entries
# ---------------------------------------------------------------------------------------------

def _shape(message: bytes, name: str) -> tuple[int, ...]:
    dims = []
    for number, _, value in _fields(message, name, {2: 2, 3: 0}):
        if number == 2:
            size = next((v for n, _, v in _fields(value, name, {1: 0}) if n == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif number == 3 and value:
            raise CheckpointError(f'{name}: tensor of unknown rank')
    if any(d < 0 for d in dims):
        raise CheckpointError(f'{name}: tensor with an unknown dimension {dims}')
    return tuple(dims)


def _entry(name: str, message: bytes) -> dict:
    entry = {'dtype': 0, 'shape': (), 'shard': 0, 'offset': 0, 'size': 0, 'crc32c': None}
    for number, _, value in _fields(message, name, {1: 0, 2: 2, 3: 0, 4: 0, 5: 0, 6: 5}):
        if number == 1:
            entry['dtype'] = value
        elif number == 2:
            entry['shape'] = _shape(value, name)
        elif number in (3, 4, 5):
            entry[{3: 'shard', 4: 'offset', 5: 'size'}[number]] = value
        elif number == 6:
            entry['crc32c'] = value
        elif number == 7:
            raise CheckpointError(f'{name}: partitioned (sliced) variables are not supported')
    if entry['dtype'] not in DTYPES:
        raise CheckpointError(f'{name}: unsupported tensor dtype (TensorFlow DataType {entry["dtype"]})')
    return entry


def _header(message: bytes, source: str) -> dict:
    header = {'num_shards': 1, 'endianness': 0}
    for number, _, value in _fields(message, source, {1: 0, 2: 0}):
        if number == 1:
            header['num_shards'] = value
        elif number == 2:
            header['endianness'] = value
    if header['endianness'] != 0:
        raise CheckpointError(f'{source}: big-endian checkpoints are not supported')
    return header


def parse_bundle(index: bytes, source: str = 'checkpoint') -> tuple[int, dict[str, dict]]:
    """``(number of shards, {tensor name: entry})`` of a bundle's ``.index`` bytes (read once)."""
    table = read_index(index, f'{source}.index')
    if b'' not in table:
        raise CheckpointError(f'{source}.index: no bundle header (not a TensorFlow checkpoint bundle)')
    num_shards = _header(table.pop(b''), source)['num_shards']
    entries = {}
    for key, message in table.items():
        name = key.decode('utf-8', 'replace')
        entries[name] = entry = _entry(name, message)
        if not 0 <= entry['shard'] < num_shards:
            raise CheckpointError(f'{name}: shard {entry["shard"]} of a {num_shards}-shard bundle')
    return num_shards, entries


def read_tensors(num_shards: int, entries: dict[str, dict], shards: dict[int, bytes],
                 source: str = 'checkpoint') -> dict[str, np.ndarray]:
    """The tensors of parsed bundle ``entries`` from its data shards (by shard number), each a
    C-contiguous numpy array of its own, crc32c checked."""
    tensors = {}
    for name, entry in entries.items():
        data = shards.get(entry['shard'])
        if data is None:
            missing = data_name(Path(source).name, entry['shard'], num_shards)
            raise CheckpointError(f'{source}: missing data shard {missing} (needed by {name})')
        dtype = np.dtype(DTYPES[entry['dtype']])
        count = math.prod(entry['shape'])  # Python ints: no overflow.
        if entry['size'] != count * dtype.itemsize:
            raise CheckpointError(f'{name}: {entry["size"]} bytes for {entry["shape"]} {dtype}')
        start, end = entry['offset'], entry['offset'] + entry['size']
        if end > len(data):
            raise CheckpointError(f'{source}: {name} lies past the end of its data shard '
                                  f'({end} > {len(data)} bytes): truncated')
        raw = data[start:end]
        if entry['crc32c'] is not None and crc32c(raw) != unmask(entry['crc32c']):
            raise CheckpointError(f'{source}: {name} fails its crc32c check (corrupt data shard)')
        tensors[name] = np.frombuffer(raw, dtype, count).reshape(entry['shape']).copy()
    return tensors


def data_name(prefix: str, shard: int, num_shards: int) -> str:
    """The file name of data shard ``shard`` of a ``num_shards``-shard bundle."""
    return f'{prefix}.data-{shard:05d}-of-{num_shards:05d}'


# ---------------------------------------------------------------------------------------------
# Files: a loose bundle or the released .tar.gz
# ---------------------------------------------------------------------------------------------

def _shard_numbers(names, num_shards: int | None = None) -> dict[int, str]:
    """Data shard file names by shard number (of a ``num_shards``-shard bundle, if given)."""
    found = {}
    for name in names:
        match = re.search(r'\.data-(\d{5})-of-(\d{5})$', name)
        if match and (num_shards is None or int(match.group(2)) == num_shards):
            found[int(match.group(1))] = name
    return found


def _read_loose(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    prefix = str(path)[:-len('.index')] if str(path).endswith('.index') else str(path)
    index_path = Path(prefix + '.index')
    if not index_path.is_file():
        raise FileNotFoundError(f'{path}: no such checkpoint (looked for {index_path})')
    folder, stem = index_path.parent, Path(prefix).name
    num_shards, entries = parse_bundle(index_path.read_bytes(), prefix)
    names = _shard_numbers((p.name for p in folder.glob(f'{stem}.data-*')), num_shards)
    shards = {n: (folder / f).read_bytes() for n, f in names.items()}
    tensors = read_tensors(num_shards, entries, shards, prefix)
    return tensors, {'file': index_path.name, 'prefix': stem, 'num_shards': num_shards}


def _safe_members(archive: tarfile.TarFile, source: str) -> dict[str, tarfile.TarInfo]:
    """Regular-file members by base name; absolute paths, ``..`` and links are refused."""
    members = {}
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith(('/', '\\')) or '..' in parts or re.match(r'^[A-Za-z]:', member.name):
            raise CheckpointError(f'{source}: refuses the member {member.name!r} '
                                  '(an absolute path or one outside the archive)')
        if member.issym() or member.islnk():
            raise CheckpointError(f'{source}: refuses the link {member.name!r} -> {member.linkname!r}')
        if member.isfile():
            members[Path(member.name).name] = member
    return members


def _read_tar(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    try:
        archive = tarfile.open(path, 'r:*')
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CheckpointError(f'{path}: not a readable .tar.gz archive ({err})') from err
    with archive:
        try:
            members = _safe_members(archive, str(path))
            indexes = sorted(n for n in members if n.endswith('.index'))
            if not indexes:
                raise CheckpointError(f'{path}: no *.index member: not a TensorFlow checkpoint archive '
                                      f'(members: {sorted(members)[:10]})')
            stem = indexes[0][:-len('.index')]  # As DeepLabCut: the first snapshot-*.index.

            def read(name, limit):
                if members[name].size > limit:
                    raise CheckpointError(f'{path}: member {name} is {members[name].size} bytes, more than '
                                          f'the {limit} this checkpoint can need')
                return archive.extractfile(members[name]).read(limit)

            source = f'{path}:{stem}'
            num_shards, entries = parse_bundle(read(indexes[0], 1 << 30), source)
            # No data shard needs more than the largest offset + size any tensor declares.
            limit = max((e['offset'] + e['size'] for e in entries.values()), default=0)
            names = _shard_numbers((n for n in members if n.startswith(stem + '.')), num_shards)
            tensors = read_tensors(num_shards, entries, {n: read(f, limit) for n, f in names.items()}, source)
            extras = {}
            if 'pose_cfg.yaml' in members:
                extras['pose_cfg.yaml'] = read('pose_cfg.yaml', 1 << 20)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise CheckpointError(f'{path}: truncated or corrupt archive ({err})') from err
    return tensors, {'file': path.name, 'prefix': stem, 'num_shards': num_shards, **extras}


def read_tf_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, info)`` of a TensorFlow checkpoint: the released ``.tar.gz``, a ``snapshot-N.index``
    file or the ``snapshot-N`` prefix.  ``info``: the file, the snapshot prefix, the shard count
    (and the archive's ``pose_cfg.yaml`` bytes, if it has one)."""
    path = Path(path)
    if path.is_file():
        with open(path, 'rb') as f:
            head = f.read(4)
        if head[:2] == b'PK':
            raise CheckpointError(f'{path}: this is a PyTorch (zip) checkpoint, not a TensorFlow one; '
                                  'convert it with --pose or --detector')
        if head[:2] == b'\x1f\x8b' or tarfile.is_tarfile(path):
            return _read_tar(path)
    return _read_loose(path)
