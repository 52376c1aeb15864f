"""Training augmentation against albumentations 1.4.3 as DeepLabCut 3.0.2 builds it.

Goldens: ``tests/reference/make_augment_fixtures.py`` (``tests/fixtures/augment_golden.npz``).  OpenCV
does the pixel work on both sides (warpAffine, copyMakeBorder) and the float64 coordinate
arithmetic is the same sequence of operations, so images match by sha256 and keypoints, boxes
and the rotation matrix to the bit: the live reference test asserts exactly that.  Against the
committed goldens, coordinates that went through a rotation get a tolerance (matrix 1e-12,
keypoints and boxes 1e-9 px): albumentations and we both multiply the 3x3 matrices (and the box
corners) with numpy's matmul, whose float64 rounding depends on the CPU's BLAS kernel (FMA or
not), so another machine may differ from the one that made the goldens in the last bits (pixels
do not move: OpenCV rounds coordinates to 1/32 px).  On that machine they are exact too.
Unlabelled keypoints are NaN on our side and ``(0, 0)`` with ``v = 0`` in DeepLabCut: only their
visibility is compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from superanimal_jax.transforms import augment as aug
from superanimal_jax.transforms.normalize import normalize_crops

from conftest import run_reference_script

GOLDENS = ('augment_golden.npz',)  # Files recording the versions the goldens were made with (conftest).

FIXTURES = Path(__file__).parent / 'fixtures'


def load(path: Path) -> dict:
    with np.load(path) as golden:
        return dict(golden)


GOLDEN = load(FIXTURES / 'augment_golden.npz')
INDEX = json.loads(str(GOLDEN['index']))


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def image_of(golden: dict, name: str) -> np.ndarray:
    if f'frames/{name}' in golden:
        return golden[f'frames/{name}']
    y0, y1, x0, x1 = golden[f'crops/{name}/window']
    return golden[f'frames/{golden[f"crops/{name}/source"]}'][y0:y1, x0:x1]


def inputs(golden: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kp = golden[f'inputs/{name}/keypoints']
    return image_of(golden, name), kp[:, :2], kp[:, 2] > 0, golden[f'inputs/{name}/bboxes']


def check_image(golden: dict, key: str, image: np.ndarray) -> None:
    np.testing.assert_array_equal(image.shape, golden[f'{key}/shape'])
    np.testing.assert_array_equal(image[::8, ::8], golden[f'{key}/thumb'], err_msg=key)
    if f'{key}/full' in golden:
        np.testing.assert_array_equal(image, golden[f'{key}/full'], err_msg=key)
    assert sha(image) == str(golden[f'{key}/sha256']), key


def check_points(golden: dict, key: str, xy: np.ndarray, labelled: np.ndarray, bboxes: np.ndarray,
                 visible: np.ndarray | None = None, atol: float = 0.0) -> None:
    expected = golden[f'{key}/keypoints']
    np.testing.assert_allclose(xy[labelled], expected[labelled, :2], rtol=0, atol=atol, err_msg=key)
    assert np.isnan(xy[~labelled]).all()
    if visible is not None:
        np.testing.assert_array_equal(visible, expected[:, 2] > 0, err_msg=key)
    np.testing.assert_allclose(bboxes, golden[f'{key}/bboxes'], rtol=0, atol=atol, err_msg=key)
    assert ((bboxes == 0).all(axis=1) == (golden[f'{key}/bboxes'] == 0).all(axis=1)).all(), key


def check_rotate(golden: dict, case: dict, exact: bool = False) -> None:
    image, xy, labelled, boxes = inputs(golden, case['image'])
    matrix = aug.rotation_matrix(case['angle'], *image.shape[:2])
    np.testing.assert_allclose(matrix, golden[f'{case["key"]}/matrix'], rtol=0, atol=0 if exact else 1e-12)
    out, xy_out, boxes_out = aug.rotate(image, xy, boxes, case['angle'])
    check_image(golden, case['key'], out)
    # DeepLabCut's visibility update around the op: inside before and after.
    visible = labelled & aug.in_image(xy, image.shape) & aug.in_image(xy_out, out.shape)
    check_points(golden, case['key'], xy_out, labelled, boxes_out, visible, 0 if exact else 1e-9)


def check_noise(golden: dict, case: dict, exact: bool = False) -> None:
    image = image_of(golden, case['image'])
    noise = aug.gaussian_noise(image.shape, case['std'], case['seed'])
    assert sha(noise) == str(golden[f'{case["key"]}/noise_sha256'])
    check_image(golden, case['key'], aug.add_gaussian_noise(image, noise))


def check_pad(golden: dict, case: dict, exact: bool = False) -> None:  # No matmul: always exact.
    image, xy, labelled, boxes = inputs(golden, case['image'])
    out, xy_out, boxes_out = aug.auto_pad(image, xy, boxes, 32, case['position'])
    check_image(golden, case['key'], out)
    check_points(golden, case['key'], xy_out, labelled, boxes_out)


def chain_params(image: np.ndarray, angle, noise, position) -> dict:
    std, seed = noise or (0.0, 0)
    return {'image_shape': image.shape[:2], 'rotate': angle is not None, 'angle': angle or 0.0,
            'noise': noise is not None, 'noise_std': std, 'noise_seed': seed, 'pad_position': tuple(position),
            'pad_divisor': 32}


def check_chain(golden: dict, case: dict, exact: bool = False) -> None:
    image, xy, labelled, boxes = inputs(golden, case['image'])
    params = chain_params(image, case.get('angle'), case.get('noise'), case['position'])
    res = aug.apply(image, xy, boxes, params)
    assert res.image.dtype == np.float32
    check_image(golden, case['key'], res.image)
    atol = 0 if exact or case.get('angle') is None else 1e-9
    check_points(golden, case['key'], res.keypoints, labelled, res.bboxes, res.visible, atol)


CHECKS = {'rotate': check_rotate, 'noise': check_noise, 'pad': check_pad, 'chain': check_chain,
          'off': check_chain}
CASES = [(kind, case) for kind in CHECKS for case in INDEX[kind]]


@pytest.mark.parametrize('kind,case', CASES, ids=[c['key'] for _, c in CASES])
def test_matches_albumentations(kind, case):
    CHECKS[kind](GOLDEN, case)


def test_goldens_cover_the_hazards():
    """The cases exercise what they are meant to: dropped and clipped boxes, keypoints rotated out,
    padding that is not a no-op, the near-identity shortcut."""
    chain = [GOLDEN[f'{c["key"]}/bboxes'] for c in INDEX['chain']]
    assert any((b == 0).all(axis=1).any() for b in chain)  # A box rotated wholly out.
    rotated = [GOLDEN[f'{c["key"]}/keypoints'] for c in INDEX['rotate'] if abs(c['angle']) == 30]
    assert any(((k[:, 2] == 0) & (GOLDEN[f'inputs/{c["image"]}/keypoints'][:, 2] > 0)).any()
               for k, c in zip(rotated, [c for c in INDEX['rotate'] if abs(c['angle']) == 30]))
    assert any(tuple(GOLDEN[f'{c["key"]}/shape'][:2]) != image_of(GOLDEN, c['image']).shape[:2]
               for c in INDEX['pad'])
    tiny = [c for c in INDEX['rotate'] if 0 < c['angle'] < 1e-6]
    assert tiny and all(sha(image_of(GOLDEN, c['image'])) == str(GOLDEN[f'{c["key"]}/sha256']) for c in tiny)


def test_normalize_is_normalize_crops():
    frame = image_of(GOLDEN, 'img0045')
    noisy = aug.add_gaussian_noise(frame, aug.gaussian_noise(frame.shape, 60.0, 0))
    assert all(len(np.unique(noisy[..., c])) == 256 for c in range(3))  # Every value in every channel.
    np.testing.assert_array_equal(aug.normalize(noisy), np.asarray(normalize_crops(noisy)))


def test_same_seed_same_sample():
    image, xy, _, boxes = inputs(GOLDEN, 'crop')
    config = aug.TrainAugmentation(rotate_p=1.0, noise_p=1.0)
    first = aug.augment(config, np.random.default_rng(5), image, xy, boxes)
    again = aug.augment(config, np.random.default_rng(5), image, xy, boxes)
    other = aug.augment(config, np.random.default_rng(6), image, xy, boxes)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.image, other.image)
    assert aug.sample_params(config, np.random.default_rng(5), image.shape) == \
        aug.sample_params(config, np.random.default_rng(5), image.shape)


def test_sample_params_statistics():
    config, rng, n = aug.TrainAugmentation(), np.random.default_rng(0), 4000
    draws = [aug.sample_params(config, rng, (470, 630, 3)) for _ in range(n)]
    rotate = np.array([d['rotate'] for d in draws])
    angles = np.array([d['angle'] for d in draws])
    noise = np.array([d['noise'] for d in draws])
    std = np.array([d['noise_std'] for d in draws])
    top, left = np.array([d['pad_position'] for d in draws]).T
    tolerance = 4 * np.sqrt(0.25 / n)  # 4 sigma of a Bernoulli(0.5) mean.
    assert abs(rotate.mean() - config.rotate_p) < tolerance and abs(noise.mean() - config.noise_p) < tolerance
    assert (np.abs(angles) <= config.rotate).all() and angles.min() < -29 and angles.max() > 29
    assert abs(angles.mean()) < 4 * config.rotate / np.sqrt(3 * n)
    # The variance is uniform up to noise_std ** 2, so the std reaches noise_std but no further.
    assert (std <= config.noise_std).all() and std.max() > 0.99 * config.noise_std
    assert abs((std ** 2).mean() - config.noise_std ** 2 / 2) < 4 * config.noise_std ** 2 / np.sqrt(12 * n)
    rows, cols = aug.pad_amounts((470, 630), 32)
    assert set(top) == set(range(rows + 1)) and set(left) == set(range(cols + 1))
    assert len({d['noise_seed'] for d in draws}) == n
    off = [aug.sample_params(aug.TrainAugmentation.off(), rng, (470, 630)) for _ in range(200)]
    assert not any(d['rotate'] or d['noise'] for d in off)


def test_off_pads_and_normalises_only():
    image, xy, labelled, boxes = inputs(GOLDEN, 'crop')
    res = aug.augment(aug.TrainAugmentation.off(), np.random.default_rng(1), image, xy, boxes)
    params = aug.sample_params(aug.TrainAugmentation.off(), np.random.default_rng(1), image.shape)
    padded, xy_pad, boxes_pad = aug.auto_pad(image, xy, boxes, 32, params['pad_position'])
    np.testing.assert_array_equal(res.image, aug.normalize(padded))
    np.testing.assert_array_equal(res.keypoints, xy_pad)
    np.testing.assert_array_equal(res.bboxes, boxes_pad)
    assert res.image.shape[0] % 32 == 0 and res.image.shape[1] % 32 == 0


def test_rejects_mismatched_params():
    image, xy, _, boxes = inputs(GOLDEN, 'crop')
    params = aug.sample_params(aug.TrainAugmentation(), np.random.default_rng(0), (480, 640))
    with pytest.raises(ValueError, match='drawn for'):
        aug.apply(image, xy, boxes, params)
    with pytest.raises(ValueError, match='pad position'):
        aug.auto_pad(image, xy, boxes, 32, (11, 0))


@pytest.mark.reference
def test_live_reference(tmp_path):
    """Regenerates the goldens with albumentations/DeepLabCut in ``.ref`` and checks every case."""
    import cv2

    run_reference_script('make_augment_fixtures.py', tmp_path)
    golden = load(tmp_path / 'augment_golden.npz')
    theirs = json.loads(str(golden['versions']))['opencv']
    # OpenCV does the pixel work on both sides: compare like with like (OpenCV 5.1 moves a few
    # rotated pixels against 5.0 on both sides alike).
    assert theirs == cv2.__version__, (
        f'.ref has OpenCV {theirs}, this environment {cv2.__version__}: install the pinned '
        'opencv-python-headless of constraints.txt in .ref (README, "Goldens")')
    index = json.loads(str(golden['index']))
    for kind, check in CHECKS.items():
        for case in index[kind]:
            check(golden, case, exact=True)
