"""Shared fixtures: the reference manifest, regenerated synthetic weights, written checkpoints.

Golden files in ``tests/fixtures`` were made by ``tests/reference/make_pose_fixtures.py`` inside the
DeepLabCut 3.0.2 reference environment; nothing here needs that environment.
"""

import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

# One compilation cache for the whole run (fresh each run): programs that several tests build
# anew (the same network behind a new jitted function, the same tiny train step in several
# fine-tuning tests and their subprocesses) compile once.  Set before the package is imported,
# which keeps a cache JAX already has instead of its default under ~/.cache.
COMPILATION_CACHE = Path(tempfile.mkdtemp(prefix='saj-jax-cache-'))
os.environ['JAX_COMPILATION_CACHE_DIR'] = str(COMPILATION_CACHE)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
jax.config.update('jax_compilation_cache_dir', str(COMPILATION_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_default_matmul_precision', 'highest')

from superanimal_jax.checkpoints import synthetic  # noqa: E402

FIXTURES = Path(__file__).parent / 'fixtures'


# -- Which versions the goldens were made with ------------------------------------------------
# A test module that compares against goldens names the files recording their versions in a
# module-level ``GOLDENS`` tuple; when one of its tests fails, the report says what each golden
# was made with and what runs here (a moved pin is then visible at once; README, "Goldens").
PACKAGES = {'opencv': 'opencv-python-headless', 'scikit-image': 'scikit-image'}  # Name -> distribution.


def golden_versions(name: str) -> dict[str, str]:
    """The tool versions recorded in a golden file (``*.json``: ``versions``; ``*.npz``:
    ``versions``, ``meta`` with ``versions``, or ``meta/<tool>`` entries)."""
    path = FIXTURES / name
    if path.suffix == '.json':
        return json.loads(path.read_text()).get('versions', {})
    with np.load(path) as golden:
        if 'versions' in golden.files:
            return json.loads(str(golden['versions']))
        if 'meta' in golden.files:
            return json.loads(str(golden['meta'])).get('versions', {})
        return {k[5:]: str(golden[k]) for k in golden.files if k.startswith('meta/') and '_' not in k[5:]}


def running_version(tool: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(PACKAGES.get(tool, tool))
    except metadata.PackageNotFoundError:
        return None


def versions_note(goldens) -> str:
    lines = []
    for name in goldens:
        for tool, made in golden_versions(name).items():
            running = running_version(tool)
            same = running is not None and (running == made or running.startswith(made + '.'))
            state = ('not installed here' if running is None
                     else f'running {running}' + ('' if same else ' (differs)'))
            lines.append(f'{name}: made with {tool} {made}, {state}')
    return '\n'.join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    goldens = getattr(item.module, 'GOLDENS', ())
    if report.failed and goldens:
        report.sections.append(('golden versions (regenerate goldens: README, "Goldens")',
                                versions_note(goldens)))


@pytest.fixture(scope='session')
def pose_manifest() -> dict:
    return json.loads((FIXTURES / 'pose_manifest.json').read_text())


@pytest.fixture(scope='session')
def pose_state() -> dict[str, np.ndarray]:
    """The synthetic weights the goldens were made with, regenerated and checked bit for bit."""
    return synthetic.fixture_state(FIXTURES, 'pose')


@pytest.fixture(scope='session')
def pose_checkpoints(pose_state, pose_manifest, tmp_path_factory) -> dict[str, Path]:
    """Both released formats (seed pose_model.pth, DeepLabCut 3 .pt), written with torch.save."""
    extra = synthetic.synthetic_state_dict(pose_manifest['seed_extra_manifest'], seed=pose_manifest['seed'])
    return synthetic.write_pose_checkpoints(pose_state, tmp_path_factory.mktemp('ckpt'), seed_extra=extra)


@pytest.fixture(scope='session')
def pose_model_dir(pose_checkpoints, tmp_path_factory) -> Path:
    import superanimal_jax

    return superanimal_jax.convert(pose=pose_checkpoints['seed'],  # The model card's pose_model.pth layout.
                                   out=tmp_path_factory.mktemp('models') / 'topviewmouse')


@pytest.fixture(scope='session')
def pose_golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / 'pose_golden.npz') as golden:
        return dict(golden)


@pytest.fixture(scope='session')
def detector_manifest() -> dict:
    return json.loads((FIXTURES / 'detector_manifest.json').read_text())


@pytest.fixture(scope='session')
def detector_state() -> dict[str, np.ndarray]:
    """The synthetic detector weights the goldens were made with, checked bit for bit."""
    return synthetic.fixture_state(FIXTURES, 'detector')


@pytest.fixture(scope='session')
def detector_checkpoints(detector_state, tmp_path_factory) -> dict[str, Path]:
    return synthetic.write_detector_checkpoints(detector_state, tmp_path_factory.mktemp('det'))


@pytest.fixture(scope='session')
def detector_variables(detector_state) -> dict:
    """The synthetic detector weights converted in memory (no file)."""
    from superanimal_jax.checkpoints.convert import convert_detector_state

    return convert_detector_state(detector_state, source='detector')[0]


OPENFIELD_PROJECT = FIXTURES / 'openfield_project'


def run_reference_script(script: str, out: Path, *args: str, python: str = '.ref') -> None:
    """Run ``tests/reference/<script>`` in a reference environment (``.ref/``: DeepLabCut 3.0.2 with
    PyTorch; ``.ref-tf/``: its TensorFlow engine) with ``--out out``; the reference tier is skipped
    where that environment was not made."""
    import subprocess

    interpreter = FIXTURES.parents[1] / python / 'bin' / 'python'
    if not interpreter.exists():
        pytest.skip(f'no reference environment {python}/: see ../shared/reference/README.md '
                    '(and reference/tensorflow/README.md for .ref-tf/)')
    subprocess.run([str(interpreter), f'tests/reference/{script}', '--out', str(out), *args],
                   cwd=FIXTURES.parents[1], check=True)


def write_tiny_model(path: Path, *, seed: int = 0, nan_bias: bool = False, bias_std: float = 0.0) -> Path:
    """A model directory holding the tiny HRNet with SuperAnimal's 27 keypoint names (random
    weights): fast fine-tuning tests that exercise the whole code path.  Biases are 0, or with
    ``bias_std`` drawn from N(0, bias_std^2), as in a trained network (relative comparisons of
    parameters then do not divide by the few steps' worth of updates a zero bias holds)."""
    import dataclasses

    import jax.numpy as jnp

    from superanimal_jax.checkpoints import model_dir
    from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
    from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork

    config = dataclasses.replace(POSE_VARIANTS['hrnet_tiny'], num_keypoints=27)
    shapes = jax.eval_shape(PoseNetwork(config).init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):  # numpy, not Flax's initialisers: jitting those takes ~20 s here.
        name = path[-1].key
        if name == 'kernel':
            return (rng.standard_normal(leaf.shape)
                    * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name == 'bias' and bias_std:
            return (bias_std * rng.standard_normal(leaf.shape)).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    if nan_bias:
        variables['params']['head']['deconv']['bias'] = np.full(27, np.nan, np.float32)
    return model_dir.write(path, {'pose': variables}, {'pose': {
        'variant': 'hrnet_tiny', 'num_keypoints': 27, 'stride': 4,
        'keypoints': list(TOPVIEWMOUSE_KEYPOINTS)}})


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp('tiny') / 'model')
