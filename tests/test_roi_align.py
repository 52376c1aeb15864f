"""RoIAlign, LevelMapper and MultiScaleRoIAlign against torchvision, bit for bit.

Goldens: ``tests/reference/make_roi_align_fixtures.py`` (torchvision 0.29.2 on CPU, in the reference
environment); the feature maps are regenerated here from their seeds and checked by sha256.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.ops import boxes as B
from superanimal_jax.ops import roi_align as ra

from conftest import FIXTURES

GOLDENS = ('detector_roi_align.npz',)  # Files recording the versions the goldens were made with (conftest).

ALIGN_CASES = ('s4', 's8', 's16', 's32', 's0.3', 'p5x3_n3')


@pytest.fixture(scope='module')
def golden():
    with np.load(FIXTURES / 'detector_roi_align.npz') as g:
        return dict(g)


def regenerate(seed, shapes, sha256):
    maps = [np.random.default_rng(seed + k).standard_normal(tuple(s), dtype=np.float32)
            for k, s in enumerate(shapes)]
    assert hashlib.sha256(b''.join(m.tobytes() for m in maps)).hexdigest() == sha256, \
        'golden feature maps no longer regenerate exactly'
    return maps


def assert_exact(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f'{what}: {len(bad)} of {got.size} values differ, max abs error {err.max():.3g} '
                           f'at {tuple(np.unravel_index(err.argmax(), err.shape))}')


@pytest.mark.parametrize('case', ALIGN_CASES)
def test_roi_align_matches_torchvision(golden, case):
    g = {k.split('/')[-1]: v for k, v in golden.items() if k.startswith(f'align/{case}/')}
    (features,) = regenerate(int(g['seed']), [g['shape']], str(g['sha256']))
    fn = jax.jit(functools.partial(ra.roi_align, output_size=tuple(int(v) for v in g['output_size']),
                                   sampling_ratio=int(g['sampling_ratio'])))
    assert_exact(fn(features, g['rois'], float(g['scale'])), g['out'], f'roi_align {case}')


def test_level_of_every_area_around_each_threshold(golden):
    areas = golden['level/window_areas'].reshape(-1)
    boxes = np.stack([0 * areas, 0 * areas, areas, 0 * areas + 1], 1)
    assert B.area(boxes.astype(np.float32)).tolist() == areas.tolist()
    levels = jax.jit(ra.level_of)(boxes)
    assert levels.dtype == jnp.int32
    np.testing.assert_array_equal(levels, golden['level/window_levels'].reshape(-1))


def test_level_of_boxes_at_the_boundaries(golden):
    boxes = golden['level/boxes']
    levels = np.asarray(jax.jit(ra.level_of)(boxes))
    np.testing.assert_array_equal(levels, golden['level/boxes_levels'])
    # sqrt(area) exactly 112 / 224 / 448 (4 boxes each) opens levels '1' / '2' / '3'.
    assert levels[:12].tolist() == [1] * 4 + [2] * 4 + [3] * 4


def test_area_thresholds_are_torchvisions(golden):
    want = golden['level/thresholds']
    assert np.float32(ra.area_thresholds()).tolist() == want.tolist()
    # Only torch's non-IEEE sqrt separates them: one float32 step at the 4 -> 5 boundary.
    ieee = np.float32(ra.ieee_area_thresholds())
    assert (ieee.view(np.int32) - want.view(np.int32)).tolist() == [0, 0, 1]


@pytest.fixture(scope='module')
def pyramid(golden):
    maps = regenerate(int(golden['multiscale/seed']), golden['multiscale/shapes'],
                      str(golden['multiscale/sha256']))
    return [jnp.asarray(m) for m in maps]


def test_multiscale_roi_align_matches_torchvision(golden, pyramid):
    rois = golden['multiscale/rois']
    scales = ra.infer_scales([m.shape for m in pyramid], golden['multiscale/image'])
    assert scales == tuple(golden['multiscale/scales'])
    levels = golden['multiscale/levels']
    np.testing.assert_array_equal(ra.level_of(rois), levels)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    got = jax.jit(ra.multiscale_roi_align, static_argnums=2)(pyramid, rois, scales)
    assert_exact(got, golden['multiscale/out'], 'multiscale_roi_align')


def test_multiscale_padding_rows_are_finite_and_harmless(golden, pyramid):
    rois = golden['multiscale/rois']
    padding = np.float32([[0, 0, 0, 0], [np.nan] * 4, [np.inf, -np.inf, np.inf, np.inf], [50, 60, 10, 5],
                          [-1e30, -1e30, 1e30, 1e30], [1e6, 1e6, 1e6 + 5, 1e6 + 5]])
    padded = np.concatenate([rois[:20], padding, rois[20:]])
    got = np.asarray(jax.jit(ra.multiscale_roi_align)(pyramid, padded))
    assert np.isfinite(got).all()
    assert_exact(np.delete(got, np.s_[20:26], axis=0), golden['multiscale/out'], 'rows beside padding')


def test_multiscale_vmaps_over_images(golden, pyramid):
    rois = golden['multiscale/rois']
    batch = [jnp.stack([m, -2 * m]) for m in pyramid]
    got = jax.jit(jax.vmap(ra.multiscale_roi_align))(batch, np.stack([rois, rois[::-1]]))
    assert_exact(got[0], golden['multiscale/out'], 'image 0')
    assert_exact(got[1], -2 * golden['multiscale/out'][::-1], 'image 1')  # Exact: scaling by -2.


def assert_gradient_close(got, want, exact, what):
    """float64: torchvision's float64 gradient to rounding.  float32: no further from torchvision's
    float64 gradient than its own float32 one is (the scatter adds run in another order; within
    1e-6 of the largest value where torchvision's float32 is exact)."""
    scale = max(np.abs(exact).max(), 1e-300)  # An all-zero reference asks for an all-zero gradient.
    error = np.abs(got - exact).max() / scale
    if want.dtype == np.float64:
        assert error <= 1e-13, (what, error)
    else:
        own = np.abs(want - exact).max() / scale
        assert error <= max(2 * own, 1e-6), (what, error, own)


@pytest.mark.parametrize('dtype', ('float32', 'float64'))
@pytest.mark.parametrize('case', ALIGN_CASES)
def test_roi_align_gradient_matches_torchvision(golden, case, dtype):
    """The feature gradient (the backward kernel: each sample adds ``g * w / count`` to its four
    corners; none for the boxes), float32 and float64, against torchvision's backward."""
    g = {k.split('/')[-1]: v for k, v in golden.items() if k.startswith(f'align/{case}/')}
    (features,) = regenerate(int(g['seed']), [g['shape']], str(g['sha256']))
    cotangent = golden[f'grad/{case}/cotangent']
    fn = functools.partial(ra.roi_align, rois=g['rois'].astype(dtype), spatial_scale=float(g['scale']),
                           output_size=tuple(int(v) for v in g['output_size']),
                           sampling_ratio=int(g['sampling_ratio']))
    with jax.enable_x64(dtype == 'float64'):
        _, vjp = jax.vjp(fn, features.astype(dtype))
        (got,) = vjp(cotangent.astype(dtype))
        assert got.dtype == dtype
        got = np.asarray(got, np.float64)
    assert_gradient_close(got, golden[f'grad/{case}/{dtype}'], golden[f'grad/{case}/float64'], case)


@pytest.mark.parametrize('dtype', ('float32', 'float64'))
def test_multiscale_gradient_matches_torchvision(golden, pyramid, dtype):
    rois = golden['multiscale/rois']
    cotangent = golden['grad/multiscale/cotangent']
    with jax.enable_x64(dtype == 'float64'):
        maps = [m.astype(dtype) for m in pyramid]
        _, vjp = jax.vjp(lambda *levels: ra.multiscale_roi_align(levels, rois.astype(dtype)), *maps)
        got = [np.asarray(a, np.float64) for a in vjp(cotangent.astype(dtype))]
    for k, level in enumerate(got):
        want = golden[f'grad/multiscale/{dtype}/{k}']
        # Every level receives RoIs in float32; in float64 the RoIs at torchvision's float32 level-5
        # threshold stay at level 4, as torchvision's float64 LevelMapper puts them.
        assert np.count_nonzero(want) > 0.1 * want.size or (dtype == 'float64' and k == 3)
        assert_gradient_close(level, want, golden[f'grad/multiscale/float64/{k}'], f'level {k}')


@pytest.mark.parametrize('name', ('800x1066', '749x1333', '800x800'))
def test_infer_scales_and_level_range(golden, name):
    scales = ra.infer_scales(golden[f'scales/{name}/shapes'], golden[f'scales/{name}/image'])
    assert scales == tuple(golden[f'scales/{name}/scales']) == ra.FPN_SCALES
    assert ra.level_range(scales) == tuple(golden[f'scales/{name}/k_range'])


def test_float32_guards_keep_c_rounding():
    """XLA's CPU backend would fuse ``a * b + c`` and divide by a reciprocal; the guards stop it."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.uniform(-100, 100, 100_000).astype(np.float32) for _ in range(3))
    got = jax.jit(lambda a, b, c: ra._rounded(a * b) + c)(a, b, c)
    np.testing.assert_array_equal(got, a * b + c)
    for n in (7, 3, 4):
        np.testing.assert_array_equal(jax.jit(lambda x, n=n: ra.divide(x, n))(a), a / np.float32(n))
