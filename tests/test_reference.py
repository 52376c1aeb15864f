"""Reference tier (opt-in): live comparison with DeepLabCut 3.0.2 installed in ``.ref/``.

    .venv/bin/python -m pytest -m reference -s

Runs ``tests/reference/make_pose_fixtures.py --full`` in the reference environment: the real PoseModel,
fresh synthetic weights written by the reference torch in both released formats, six real
openfield crops and two random inputs, every tap in full (no subsampling).  We then convert the
files the reference wrote and compare.  Takes about 5 minutes on 2 cores.
"""


import numpy as np
import pytest

import superanimal_jax
from superanimal_jax.checkpoints.rules import flatten

from conftest import run_reference_script
from pose_parity import check_float64, check_keypoints, check_taps, golden_inputs

pytestmark = pytest.mark.reference


@pytest.fixture(scope='module')
def live(tmp_path_factory):
    out = tmp_path_factory.mktemp('live')
    run_reference_script('make_pose_fixtures.py', out, '--full', '--checkpoints', str(out / 'checkpoints'))
    with np.load(out / 'pose_golden_full.npz') as golden, \
            np.load(out / 'pose_golden_float64_full.npz') as golden64:
        return out, dict(golden), dict(golden64)


@pytest.fixture(scope='module')
def pose(live):
    out = live[0]
    model_dir = superanimal_jax.convert(pose=out / 'checkpoints' / 'superanimal_topviewmouse_hrnet_w32.pt',
                                        out=out / 'model')
    return superanimal_jax.load(model_dir).pose


def test_reference_written_formats_convert_identically(live, pose):
    seed = superanimal_jax.convert(pose=live[0] / 'checkpoints' / 'pose_model.pth', out=live[0] / 'seed')
    ours = flatten(superanimal_jax.load(seed).pose.variables)
    for path, value in flatten(pose.variables).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ours[path]), err_msg=path)


def test_live_full_taps(live, pose, pose_manifest):
    _, golden, golden64 = live
    inputs = golden_inputs(golden, pose_manifest)
    check_taps(pose, golden, inputs, subsample=None)
    check_keypoints(pose, golden, inputs)
    check_float64(pose, golden64, inputs)
