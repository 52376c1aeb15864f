"""Anchors against torchvision's AnchorGenerator (``tests/reference/make_box_op_fixtures.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from superanimal_jax.ops import anchors as A

GOLDENS = ('detector_box_ops.npz',)  # Files recording the versions the goldens were made with (conftest).

GOLDEN = Path(__file__).parent / 'fixtures' / 'detector_box_ops.npz'
PADDED = {'800x1088': (800, 1088), '768x1344': (768, 1344)}


@pytest.fixture(scope='module')
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.mark.parametrize('size', A.FPN_SIZES)
def test_cell_anchors(golden, size):
    ours = A.cell_anchors(size)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, golden[f'anchors/cell/{size}'])


def test_cell_anchors_spec_values():
    """The values spec §2.4 lists for size 512 (round-half-even of 181.02, 362.04)."""
    np.testing.assert_array_equal(A.cell_anchors(512), [[-362, -181, 362, 181], [-256, -256, 256, 256],
                                                        [-181, -362, 181, 362]])


def test_cell_anchors_odd_sizes_and_ratios(golden):
    """Several sizes per level (ratio-major order) and .5 cases (33 / 2, 45 / 2: half-even)."""
    sizes = tuple(int(s) for s in golden['anchors/cell_odd/sizes'])
    ratios = tuple(float(r) for r in golden['anchors/cell_odd/ratios'])
    ours = A.cell_anchors(sizes, ratios)
    np.testing.assert_array_equal(ours, golden['anchors/cell_odd'])
    assert ours.shape == (len(sizes) * len(ratios), 4)


@pytest.mark.parametrize('name', PADDED)
def test_fpn_feature_sizes(golden, name):
    assert A.fpn_feature_sizes(PADDED[name]) == [tuple(s) for s in golden[f'anchors/{name}/feature_sizes']]


@pytest.mark.parametrize('name', PADDED)
def test_grid_anchors_match_torchvision(golden, name):
    key = f'anchors/{name}'
    feature_sizes = [tuple(s) for s in golden[f'{key}/feature_sizes']]
    ours = A.grid_anchors(feature_sizes, PADDED[name])
    counts = golden[f'{key}/counts']
    assert ours.dtype == np.float32 and ours.shape == (counts.sum(), 4)
    assert A.anchors_per_level(feature_sizes) == list(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    np.testing.assert_array_equal(np.stack([ours[s:s + 24] for s in starts[:-1]]), golden[f'{key}/head'])
    np.testing.assert_array_equal(np.stack([ours[e - 24:e] for e in starts[1:]]), golden[f'{key}/tail'])
    np.testing.assert_array_equal(ours[starts[-2]:], golden[f'{key}/pool'])
    np.testing.assert_array_equal(ours[golden[f'{key}/rows']], golden[f'{key}/rows_value'])
    assert hashlib.sha256(ours.tobytes()).hexdigest() == str(golden[f'{key}/sha256'])


def test_anchor_counts_from_spec():
    """Spec §2.4: 217 413 anchors for 800x1088; 193536 + 48384 + 12096 + 3024 + 756 for 768x1344."""
    assert sum(A.anchors_per_level(A.fpn_feature_sizes((800, 1088)))) == 217_413
    assert A.anchors_per_level(A.fpn_feature_sizes((768, 1344))) == [193536, 48384, 12096, 3024, 756]


def test_pool_level_stride_quirk(golden):
    """'pool' of 800x1088 is 13x17: stride 800 // 13 = 61 in y (not 64), 1088 // 17 = 64 in x."""
    pool = golden['anchors/800x1088/pool'].reshape(13, 17, 3, 4)
    base = A.cell_anchors(512)
    np.testing.assert_array_equal(pool[1, 0] - base, [[0, 61, 0, 61]] * 3)
    np.testing.assert_array_equal(pool[0, 1] - base, [[64, 0, 64, 0]] * 3)
    np.testing.assert_array_equal(pool[12, 16] - base, [[16 * 64, 12 * 61, 16 * 64, 12 * 61]] * 3)
    ours = A.grid_anchors(A.fpn_feature_sizes((800, 1088)), (800, 1088))
    np.testing.assert_array_equal(ours[-663:], golden['anchors/800x1088/pool'])


def test_mismatched_levels_raise():
    with pytest.raises(ValueError, match='anchor sizes'):
        A.grid_anchors([(2, 2)], (64, 64))
    with pytest.raises(ValueError, match='multiple of 32'):
        A.fpn_feature_sizes((800, 1066))
