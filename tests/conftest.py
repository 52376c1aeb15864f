"""Shared fixtures: the reference manifest, regenerated synthetic weights, written checkpoints.

Golden files in ``tests/fixtures`` were made by ``convert/make_pose_fixtures.py`` inside the
DeepLabCut 3.0.2 reference environment; nothing here needs that environment.
"""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from superanimal_jax import synthetic

FIXTURES = Path(__file__).parent / 'fixtures'

jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture(scope='session')
def pose_manifest() -> dict:
    return json.loads((FIXTURES / 'pose_manifest.json').read_text())


@pytest.fixture(scope='session')
def pose_state(pose_manifest) -> dict[str, np.ndarray]:
    """The synthetic weights the goldens were made with, regenerated and checked bit for bit."""
    with np.load(FIXTURES / 'pose_bn_stats.npz') as stats:
        state = synthetic.synthetic_state_dict(
            pose_manifest['manifest'], seed=pose_manifest['seed'], overrides=dict(stats),
            head_gain=pose_manifest['head_gain'])
    digest = hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest()
    assert digest == pose_manifest['state_sha256'], 'synthetic weights no longer regenerate exactly'
    return state


@pytest.fixture(scope='session')
def pose_checkpoints(pose_state, pose_manifest, tmp_path_factory) -> dict[str, Path]:
    """Both released formats (seed pose_model.pth, DeepLabCut 3 .pt), written with torch.save."""
    extra = synthetic.synthetic_state_dict(pose_manifest['seed_extra_manifest'], seed=pose_manifest['seed'])
    return synthetic.write_pose_checkpoints(pose_state, tmp_path_factory.mktemp('ckpt'), seed_extra=extra)


@pytest.fixture(scope='session')
def pose_model_dir(pose_checkpoints, tmp_path_factory) -> Path:
    import superanimal_jax

    return superanimal_jax.convert(pose=pose_checkpoints['dlc3'],
                                   out=tmp_path_factory.mktemp('models') / 'topviewmouse')


@pytest.fixture(scope='session')
def pose_golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / 'pose_golden.npz') as golden:
        return dict(golden)


@pytest.fixture(scope='session')
def detector_manifest() -> dict:
    return json.loads((FIXTURES / 'detector_manifest.json').read_text())


@pytest.fixture(scope='session')
def detector_state(detector_manifest) -> dict[str, np.ndarray]:
    """The synthetic detector weights the goldens were made with, checked bit for bit."""
    with np.load(FIXTURES / 'detector_overrides.npz') as stats:
        state = synthetic.synthetic_state_dict(detector_manifest['manifest'], seed=detector_manifest['seed'],
                                               overrides=dict(stats))
    digest = hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest()
    assert digest == detector_manifest['state_sha256'], 'synthetic detector weights no longer regenerate'
    return state


@pytest.fixture(scope='session')
def detector_checkpoints(detector_state, tmp_path_factory) -> dict[str, Path]:
    return synthetic.write_detector_checkpoints(detector_state, tmp_path_factory.mktemp('det'))


@pytest.fixture(scope='session')
def detector_variables(detector_state) -> dict:
    """The synthetic detector weights converted in memory (no file)."""
    from superanimal_jax.conversion import convert_state_dict
    from superanimal_jax.converter import detector_rules
    from superanimal_jax.detector import variables_shape

    ignore, rules = detector_rules()
    return convert_state_dict(detector_state, rules, ignore, variables_shape(), source='detector')[0]
