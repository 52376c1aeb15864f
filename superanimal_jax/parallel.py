"""Data parallelism: one ``('data',)`` device mesh, batch shardings, multi-process start-up and the
compute-dtype policy; everything that runs on more than one device goes through this module.
The design: ``docs/parallel.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = 'data'
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
ENV_PREFIX = 'SUPERANIMAL_JAX_'


def compute_dtype(name) -> jnp.dtype:
    """``'float32'`` / ``'bfloat16'`` (or the dtype itself) -> the JAX dtype, or a clear error."""
    key = jnp.dtype(name).name if not isinstance(name, str) else name
    if key not in COMPUTE_DTYPES:
        raise ValueError(f'compute dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}')
    return COMPUTE_DTYPES[key]


def data_mesh(devices: Sequence[jax.Device]) -> Mesh:
    """A one-axis ``('data',)`` mesh over ``devices``."""
    devices = list(devices)
    if not devices:
        raise ValueError('a mesh needs at least one device')
    return Mesh(np.asarray(devices), (DATA,))


def local_mesh() -> Mesh:
    """Every device this process drives (inference)."""
    return data_mesh(jax.local_devices())


def global_mesh() -> Mesh:
    """Every device of every process (training), ordered by process so that each process's
    devices hold a contiguous block of the batch."""
    return data_mesh(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits a batch along its first axis over the mesh's ``'data'`` axis."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a full copy on every device of the mesh (for weights)."""
    return NamedSharding(mesh, P())


def check_local(mesh: Mesh) -> Mesh:
    """Inference meshes must be made of this process's devices (see :func:`process_share`)."""
    foreign = [d for d in mesh.devices.flat if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(f'inference runs on this process\'s devices; the mesh holds {len(foreign)} '
                         'devices of other processes (use parallel.local_mesh(), and split the inputs '
                         'with parallel.process_share)')
    return mesh


def padded_size(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh's device count."""
    return -(-n // mesh.size) * mesh.size


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` with zero rows appended up to ``size`` rows."""
    x = np.asarray(x)
    if len(x) > size:
        raise ValueError(f'batch of {len(x)} rows does not fit in {size}')
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def fixed_batches(x: np.ndarray, batch_size: int):
    """``(batch, count)`` for consecutive ``batch_size``-row slices of ``x``, the last one padded
    with zero rows (one compiled shape for any length); ``count`` is the number of real rows."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    for start in range(0, len(x), batch_size):
        yield pad_batch(x[start:start + batch_size], batch_size), min(batch_size, len(x) - start)


def put_batch(x, mesh: Mesh) -> jax.Array:
    """A batch (rows a multiple of the device count) split across the mesh of this process."""
    if np.shape(x)[0] % mesh.size:
        raise ValueError(f'a batch of {np.shape(x)[0]} does not split over {mesh.size} devices; pad it first')
    return jax.device_put(x, batch_sharding(mesh))


def run_split(fn, variables, batch, mesh: Mesh, **options):
    """``fn(variables, batch, **options)`` with ``batch`` padded to a multiple of the mesh's
    device count and split across it; the padding rows' outputs are dropped."""
    n = np.shape(batch)[0]
    size = padded_size(n, mesh)
    if size != n:
        batch = pad_batch(jax.device_get(batch), size)
    out = fn(variables, put_batch(batch, mesh), **options)
    return out if size == n else jax.tree_util.tree_map(lambda x: x[:n], out)


def put_replicated(tree, mesh: Mesh):
    """A copy of ``tree`` on every device of ``mesh`` (every process passes the same values)."""
    return jax.device_put(tree, replicated(mesh))


def global_batch(local: dict, mesh: Mesh) -> dict:
    """The global batch from this process's rows (its block, in process order), split across
    ``mesh``; in one process, simply the batch split across the devices."""
    sharding = batch_sharding(mesh)
    processes = len({d.process_index for d in mesh.devices.flat})
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                      (np.shape(v)[0] * processes,) + np.shape(v)[1:])
            for k, v in local.items()}


def local_copy(tree):
    """Replicated global arrays -> the copy on this process's first device (for host-side work
    such as evaluation, which then needs no collectives)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x
    return jax.tree_util.tree_map(one, tree)


def process_share(items: Sequence, process_index: int | None = None,
                  process_count: int | None = None) -> list:
    """This process's share of ``items`` (round robin by process index): with N processes each
    analyses every N-th video, and together they analyse each exactly once."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f'process index {index} is not in 0..{count - 1}')
    return list(items)[index::count]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start JAX's distributed runtime (before any other JAX call) and return whether it was
    started.

    Arguments first, then the ``SUPERANIMAL_JAX_COORDINATOR`` (``host:port``),
    ``SUPERANIMAL_JAX_NUM_PROCESSES`` and ``SUPERANIMAL_JAX_PROCESS_ID`` environment variables;
    ``coordinator='auto'`` leaves everything to JAX's cluster detection (Cloud TPU, SLURM, Open
    MPI).  Without a coordinator nothing is started: a single process.
    """
    coordinator = coordinator or os.environ.get(ENV_PREFIX + 'COORDINATOR')
    if num_processes is None and os.environ.get(ENV_PREFIX + 'NUM_PROCESSES'):
        num_processes = int(os.environ[ENV_PREFIX + 'NUM_PROCESSES'])
    if process_id is None and os.environ.get(ENV_PREFIX + 'PROCESS_ID'):
        process_id = int(os.environ[ENV_PREFIX + 'PROCESS_ID'])
    if not coordinator:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ValueError('a multi-process run needs a coordinator address (host:port of process 0)')
        return False
    if coordinator == 'auto':
        jax.distributed.initialize()
        return True
    if num_processes is None or process_id is None:
        raise ValueError(f'coordinator {coordinator} given: also give the number of processes and this '
                         'process\'s id')
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f'process id {process_id} is not in 0..{num_processes - 1}')
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
