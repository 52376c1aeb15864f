"""Box arithmetic against torchvision goldens (``tests/reference/make_box_op_fixtures.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.ops import boxes as B

GOLDENS = ('detector_box_ops.npz',)  # Files recording the versions the goldens were made with (conftest).

GOLDEN = Path(__file__).parent / 'fixtures' / 'detector_box_ops.npz'
# XLA's float32 exp is within 1 ulp of torch's; a decoded coordinate then moves by at most this
# many ulp of the largest coordinate of its box (pcx +- 0.5 * pw can cancel, so ulps of the
# coordinate itself are meaningless near 0).  Measured on the goldens: 1.
MAX_ULP_EXP = 2


@pytest.fixture(scope='module')
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


def bits(x):
    return np.asarray(x, np.float32).view(np.int32)


def check_decode(ours, expected, exp_ours, exp_torch):
    """Bit-exact where both libraries' exp agree for the row; within MAX_ULP_EXP elsewhere."""
    ours = np.asarray(ours)
    exp_ours = np.asarray(exp_ours)
    same_exp = np.all(exp_ours == exp_torch.reshape(exp_ours.shape), axis=-1)
    assert same_exp.mean() > 0.5  # the bit-exact check below covers most rows
    np.testing.assert_array_equal(bits(ours[same_exp]), bits(expected[same_exp]))
    scale = np.spacing(np.abs(expected).max(axis=-1, keepdims=True))
    diff = np.abs(ours.astype(np.float64) - expected) / scale
    assert diff.max() <= MAX_ULP_EXP, f'max {diff.max()} ulp at {np.unravel_index(diff.argmax(), diff.shape)}'


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_decode_rpn_matches_torchvision(golden, jit):
    deltas, ref = golden['decode/rpn/deltas'], golden['decode/rpn/reference']
    decode = jax.jit(B.decode) if jit else B.decode
    ours = decode(deltas, ref)
    exp_ours = jnp.exp(jnp.minimum(deltas[:, 2:], np.float32(B.BBOX_XFORM_CLIP)))
    check_decode(ours, golden['decode/rpn/out'], exp_ours, golden['decode/rpn/exp'])
    # Rows with dw = dh = 0 (exp(0) = 1 exactly in both) are all bit-exact.
    np.testing.assert_array_equal(bits(np.asarray(ours)[100:150]), bits(golden['decode/rpn/out'][100:150]))


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_decode_box_head_matches_torchvision(golden, jit):
    deltas, proposals = golden['decode/roi/deltas'], golden['decode/roi/reference']
    r = len(deltas)
    decode = jax.jit(B.decode, static_argnames='weights') if jit else B.decode
    ours = decode(deltas.reshape(r, 2, 4), proposals[:, None], weights=B.ROI_WEIGHTS)
    assert ours.shape == golden['decode/roi/out'].shape == (r, 2, 4)
    scaled = deltas.reshape(r, 2, 4)[..., 2:] / np.float32(5)
    exp_ours = jnp.exp(jnp.minimum(scaled, np.float32(B.BBOX_XFORM_CLIP)))
    check_decode(ours, golden['decode/roi/out'], exp_ours, golden['decode/roi/exp'])


def test_decode_clip_is_above_only(golden):
    """dw at, just above and far above float32(clip) scale the width by exp(clip) = 62.5; large
    negative dw are not clamped (exp underflows to a zero width)."""
    deltas, ref = golden['decode/rpn/deltas'][:12], golden['decode/rpn/reference'][:12]
    assert deltas[0, 2] == np.float32(B.BBOX_XFORM_CLIP) < deltas[1, 2]
    for out in (golden['decode/rpn/out'][:12], np.asarray(B.decode(deltas, ref))):
        ratio = (out[:, 2] - out[:, 0]) / (ref[:, 2] - ref[:, 0])
        np.testing.assert_allclose(ratio[[0, 1, 3, 4, 5, 6, 7]], 62.5, rtol=1e-5)
        assert np.all(ratio[[8, 9, 10]] == 0)  # dw = -20, -100, -1e4: width below 1 ulp of x
    assert math.isclose(B.BBOX_XFORM_CLIP, 4.135166556742356, rel_tol=0, abs_tol=1e-15)


def test_rounded_stops_fma_contraction():
    """``a * b + c`` under jit must round the product like torch (and numpy) do."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(4096).astype(np.float32) for _ in range(3))
    expected = a * b + c  # numpy: two roundings
    ours = jax.jit(lambda a, b, c: B.rounded(a * b) + c)(a, b, c)
    np.testing.assert_array_equal(bits(ours), bits(expected))
    ours = jax.jit(lambda a, b, c: c - B.rounded(a * b))(a, b, c)
    np.testing.assert_array_equal(bits(ours), bits(c - a * b))


def test_clip_to_image(golden):
    height, width = golden['clip/size']
    ours = B.clip_to_image(golden['clip/boxes'], int(height), int(width))
    np.testing.assert_array_equal(bits(ours), bits(golden['clip/out']))
    # Traced sizes (per-image sizes under vmap) give the same result.
    traced = jax.vmap(B.clip_to_image, in_axes=(None, 0, 0))(
        golden['clip/boxes'], jnp.array([height, 10]), jnp.array([width, 20]))
    np.testing.assert_array_equal(bits(traced[0]), bits(golden['clip/out']))


@pytest.mark.parametrize('min_size', ['1e-3', '1e-2'])
def test_small_box_mask(golden, min_size):
    ours = np.asarray(jax.jit(B.small_box_mask, static_argnums=1)(golden['small/boxes'], float(min_size)))
    np.testing.assert_array_equal(ours, golden[f'small/keep_{min_size}'])


def test_small_box_mask_compares_in_float32(golden):
    """torch compares float32 widths with float32(min_size): width float32(0.01) < 0.01 is kept."""
    boxes = golden['small/boxes']
    assert float(boxes[6, 2] - boxes[6, 0]) < 0.01
    assert golden['small/keep_1e-2'][6]
    assert bool(B.small_box_mask(boxes[6], 1e-2))


def test_area_and_pairwise_iou(golden):
    b1, b2 = golden['iou/boxes1'], golden['iou/boxes2']
    np.testing.assert_array_equal(bits(B.area(b1)), bits(golden['iou/area1']))
    ours = np.asarray(jax.jit(B.pairwise_iou)(b1, b2))
    expected = golden['iou/out']
    assert ours.shape == expected.shape == (len(b1), len(b2))
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    np.testing.assert_array_equal(bits(np.nan_to_num(ours)), bits(np.nan_to_num(expected)))


def test_divide_is_ieee_division():
    """XLA turns ``x / scalar`` into ``x * (1 / scalar)``; torch divides. ``divide`` must too."""
    x = np.random.default_rng(1).standard_normal(4096).astype(np.float32) * 30
    for w in (10.0, 5.0, 1.0):
        np.testing.assert_array_equal(bits(jax.jit(B.divide, static_argnums=1)(x, w)),
                                      bits(x / np.float32(w)))
        np.testing.assert_array_equal(bits(B.divide(x, w)), bits(x / np.float32(w)))
