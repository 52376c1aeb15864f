"""Parity with DeepLabCut 3.0.2's PoseModel at every named tap, from committed goldens.

The goldens (``tests/fixtures/pose_golden*.npz``) were recorded by ``tests/reference/make_pose_fixtures.py``
running the real DeepLabCut/timm model on the same synthetic weights, which the ``pose_state``
fixture regenerates bit for bit and ``pose_model_dir`` converts from the seed's pose_model.pth layout
(the DeepLabCut 3 file converts to identical parameters: tests/test_convert.py).
Intermediate taps are stored at every ``subsample``-th row and column (with each tap's full
max-abs); heatmaps and keypoints in full.  ``pytest -m reference`` compares every value live.

In float32 the two frameworks round differently inside ~100 layers, hence a tolerance; in
float64 they must agree to rounding, which shows the float32 differences are rounding, not
implementation.
"""

import hashlib

import numpy as np
import pytest

import superanimal_jax

from conftest import FIXTURES
from pose_parity import check_float64, check_keypoints, check_taps, golden_inputs

GOLDENS = ('pose_manifest.json',)  # Files recording the versions the goldens were made with (conftest).


@pytest.fixture(scope='module')
def pose(pose_model_dir):
    return superanimal_jax.load(pose_model_dir).pose


@pytest.fixture(scope='module')
def inputs(pose_golden, pose_manifest):
    return golden_inputs(pose_golden, pose_manifest)


def test_normalisation_is_bitwise_deeplabcut(pose_golden, pose_manifest):
    for name, digest in pose_manifest['normalised_sha256'].items():
        ours = np.asarray(superanimal_jax.normalize_crops(pose_golden[f'crops/{name}'][None]))
        assert hashlib.sha256(ours.tobytes()).hexdigest() == digest, name


def test_float64_heatmaps_match_deeplabcut(pose, inputs):
    with np.load(FIXTURES / 'pose_golden_float64.npz') as golden64:
        check_float64(pose, dict(golden64), inputs)


def test_taps_match_deeplabcut(pose, pose_golden, pose_manifest, inputs):
    check_taps(pose, pose_golden, inputs, pose_manifest['subsample'])


def test_keypoints_match_deeplabcut(pose, pose_golden, inputs):
    check_keypoints(pose, pose_golden, inputs)
