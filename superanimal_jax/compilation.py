"""How our programs are compiled: the persistent compilation cache, per-model XLA:CPU options and
the matmul/convolution precision policy.

* **Compilation cache.** Compiled programs are kept on disk, so a second run on the same machine
  starts without recompiling. :func:`use_compilation_cache` chooses the folder; at import the
  package uses ``$SUPERANIMAL_JAX_CACHE`` (a folder, or ``off``) or else
  ``$XDG_CACHE_HOME/superanimal-jax/jax`` (``~/.cache/...``).  A cache the user configured for
  JAX itself (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is.
* **XLA:CPU options** (:func:`jit`).  jaxlib 0.10 runs float32 convolutions on CPU through its
  YNNPACK library by default, one library call per convolution followed by a separate pass for
  BatchNorm and ReLU.  Measured on a 2-core AVX2 EPYC (``benchmarks/cpu_options.py``): HRNet runs
  faster when those element-wise passes join the library call, the Faster R-CNN faster on
  XLA's older Eigen convolutions.  Each model's jitted functions carry its options
  (``CPU_OPTIONS``) on CPU only; ``SUPERANIMAL_JAX_CPU_OPTIONS=off`` leaves XLA's defaults.
* **Precision** (:func:`with_precision`).  On GPUs JAX's default float32 matmuls and convolutions
  may run in TF32, on TPUs in bfloat16 passes.  ``'highest'`` (the default for float32) computes
  in full float32 everywhere: the results the parity tables describe.  ``'default'`` is the
  backend's own choice, faster on accelerators and identical on CPU.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp

CACHE_ENV = 'SUPERANIMAL_JAX_CACHE'
CPU_OPTIONS_ENV = 'SUPERANIMAL_JAX_CPU_OPTIONS'
PRECISIONS = ('highest', 'high', 'default')

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
# Per model, the XLA:CPU compiler options its jitted functions get (see the module docstring).
CPU_OPTIONS = {
    'pose': {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_ELTWISE'},
    'detector': {_YNN: ''},
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/superanimal-jax/jax``, or ``~/.cache/superanimal-jax/jax``."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'superanimal-jax' / 'jax'


def use_compilation_cache(setting: str | os.PathLike | None = None) -> Path | None:
    """Keep compiled programs in a folder: ``setting`` (a folder, or ``'off'``), else
    ``$SUPERANIMAL_JAX_CACHE``, else :func:`default_cache_dir`.  Returns the folder in use (None
    when off).  Without an explicit ``setting``, a cache configured for JAX itself is kept."""
    if setting is None:
        configured = jax.config.jax_compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR')
        if configured:
            return Path(configured) if jax.config.jax_enable_compilation_cache else None
        setting = os.environ.get(CACHE_ENV) or default_cache_dir()
    if str(setting).lower() == 'off':
        jax.config.update('jax_enable_compilation_cache', False)
        return None
    folder = Path(setting).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f'cannot use {folder} as the compilation cache: {error.strerror}') from None
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', str(folder))
    return folder


def cpu_options(model: str, devices) -> dict[str, str]:
    """The compiler options for ``model``'s programs on ``devices`` (empty off CPU, or when
    ``$SUPERANIMAL_JAX_CPU_OPTIONS`` is ``off``)."""
    if os.environ.get(CPU_OPTIONS_ENV, '').lower() == 'off':
        return {}
    if any(d.platform != 'cpu' for d in devices):
        return {}
    return dict(CPU_OPTIONS[model])


def jit(fn, model: str, devices, **kwargs):
    """``jax.jit(fn, **kwargs)`` with ``model``'s XLA:CPU options (:func:`cpu_options`)."""
    options = cpu_options(model, devices)
    return jax.jit(fn, compiler_options=options or None, **kwargs)


def resolve_precision(precision: str | None, dtype) -> str:
    """``precision`` checked, or the default: ``'highest'`` for float32, ``'default'`` otherwise."""
    if precision is None:
        return 'highest' if jnp.dtype(dtype) == jnp.float32 else 'default'
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    return precision


def with_precision(fn, precision: str):
    """``fn`` traced under ``jax.default_matmul_precision(precision)``: every matmul and
    convolution in it without its own precision uses ``precision``."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)
    return wrapped
