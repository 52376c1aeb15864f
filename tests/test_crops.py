"""Top-down crops against DeepLabCut 3.0.2's own ``top_down_crop`` (goldens from
``tests/reference/make_crop_fixtures.py``): windows, offsets, scales and the uint8 crops bit for bit."""

import hashlib

import numpy as np
import pytest

from superanimal_jax.transforms import crops

from conftest import FIXTURES

GOLDENS = ('crops_golden.npz',)  # Files recording the versions the goldens were made with (conftest).


@pytest.fixture(scope='module')
def golden():
    with np.load(FIXTURES / 'crops_golden.npz') as g:
        return dict(g)


def test_offsets_and_scales_match_deeplabcut(golden):
    windows = crops.crop_windows(golden['boxes'])
    scales, offsets = crops.scales_and_offsets(windows)
    np.testing.assert_array_equal(offsets, golden['offsets'])
    np.testing.assert_array_equal(scales, golden['scales'])  # Exact: same float64 division.


def test_crops_are_bitwise_deeplabcut(golden):
    windows = crops.crop_windows(golden['boxes'])
    digests = [hashlib.sha256(crops.crop(golden['frame'], w).tobytes()).hexdigest() for w in windows]
    mismatched = [i for i, (a, b) in enumerate(zip(digests, golden['sha256'])) if a != b]
    assert not mismatched, f'crops differ for boxes {golden["boxes"][mismatched]}'
    for i, ref in enumerate(golden['crops']):
        np.testing.assert_array_equal(crops.crop(golden['frame'], windows[i]), ref)


def test_half_pixel_corners_round_to_even(golden):
    # Boxes [10.5, 20.5, 3, 5] and [11.5, 21.5, 3, 5] (both in the goldens): squared to side 5
    # about (12, 23) and (13, 24), every corner lands on .5; half to even gives windows 4 wide
    # and 6 high, then 6 wide and 4 high (anisotropic scales, as in DeepLabCut).
    boxes = np.array([[10.5, 20.5, 3, 5], [11.5, 21.5, 3, 5]], np.float32)
    windows = crops.crop_windows(boxes)
    np.testing.assert_array_equal(windows, [[10, 20, 14, 26], [10, 22, 16, 26]])
    rows = [np.flatnonzero((golden['boxes'] == b).all(1))[0] for b in boxes]
    np.testing.assert_array_equal(crops.scales_and_offsets(windows)[0], golden['scales'][rows])


def test_keypoints_back_to_the_frame_are_float32_of_a_float64_affine():
    keypoints = np.array([[[2.0, 254.0, 0.5]]], np.float32)
    scales, offsets = np.array([[1 / 3, 0.7]]), np.array([[-5.0, 11.0]])
    out = crops.to_frame(keypoints, scales, offsets)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], np.float32([2 / 3 - 5, 254 * 0.7 + 11, 0.5]))


def test_xyxy_to_xywh_is_float32_subtraction():
    out = crops.xyxy_to_xywh(np.array([[1.1, 2.2, 3.3, 5.5]], np.float32))
    assert out.dtype == np.float32
    assert out[0, 2] == np.float32(3.3) - np.float32(1.1)
