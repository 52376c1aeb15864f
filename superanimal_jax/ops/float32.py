"""Float32 arithmetic made independent of FMA contraction: exact products by bit-mask splits,
TwoSum, and a correctly rounded sum of three floats (round-to-odd inner addition), plus an exactly
rounded float32 FMA on the host.  See ``docs/parity/detector_input.md`` for why.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax


def fma_host(a, b, c) -> np.ndarray:
    """Exactly rounded float32 ``a * b + c`` in numpy: exact float64 product, float64 sum
    rounded to odd (TwoSum error), then one rounding to float32."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (np.asarray(s).view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Contraction-proof float32 arithmetic (device)
#
# Every product below is exact (at most 12 x 12 significant bits), so an FMA the compiler may
# form out of it rounds exactly as the separate multiply and add would.

def _split(x):
    """``x = hi + lo`` with ``hi`` rounded to 12 significant bits and ``|lo| <= ulp(hi) / 2``."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    hi = lax.bitcast_convert_type((bits + jnp.uint32(0x800)) & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, x - hi


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _add_odd(a, b):
    """``a + b`` rounded to odd: if inexact, the neighbour with an odd last bit."""
    s, err = _two_sum(a, b)
    bits = lax.bitcast_convert_type(s, jnp.int32)
    step = jnp.where((s > 0) == (err > 0), 1, -1).astype(jnp.int32)
    odd = lax.bitcast_convert_type(bits + step, jnp.float32)
    return jnp.where((err != 0) & ((bits & 1) == 0), odd, s)


def _sum3(a, b, c):
    """Correctly rounded ``a + b + c`` (Boldo & Melquiond 2008, algorithm with rounding to odd)."""
    uh, ul = _two_sum(b, c)
    th, tl = _two_sum(a, uh)
    return th + _add_odd(tl, ul)


def _product(x, y):
    """``(p, e)``: ``p = x * y`` rounded to float32 and ``e = x * y - p`` exactly (Dekker)."""
    xh, xl = _split(x)
    yh, yl = _split(y)
    high, mid, low = xh * yh, xh * yl + xl * yh, xl * yl
    p = _sum3(high, mid, low)
    return p, ((high - p) + mid) + low


def mul(x, y):
    """float32 ``x * y``, never contracted into a following addition."""
    return _product(x, y)[0]


def fma(x, y, z):
    """float32 ``x * y + z`` with a single rounding, whatever the compiler contracts."""
    p, e = _product(x, y)
    return _sum3(p, e, z)


# ------------------------------------------------------------------------------------------
# Resize, preprocess, postprocess
