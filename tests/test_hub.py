"""Getting weights: the model hub through a fake, offline Hugging Face cache (these machines
cannot reach the hub), local ``--weights`` files, the converted-model cache, and the errors."""

import shutil

import numpy as np
import pytest

import superanimal_jax
from superanimal_jax.checkpoints import hub
from superanimal_jax.cli import main as cli

COMMIT = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the released file names (synthetic weights)."""
    from huggingface_hub import constants

    cache = tmp_path / 'hf'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('SUPERANIMAL_JAX_CACHE', str(tmp_path / 'converted'))
    return cache


def fill(cache, pose_checkpoints, detector_checkpoints):
    repo = cache / ('models--' + hub.REPO_ID.replace('/', '--'))
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(COMMIT)
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True)
    shutil.copy(pose_checkpoints['dlc3'], snapshot / hub.POSE_FILE)
    shutil.copy(detector_checkpoints['dlc3'], snapshot / hub.DETECTOR_FILE)


def params(path):
    model = superanimal_jax.load(path)
    return [np.asarray(x) for x in __import__('jax').tree_util.tree_leaves((model.pose.variables,
                                                                            model.detector.variables))]


def test_hub_download_converts_once(fake_hub, pose_checkpoints, detector_checkpoints, tmp_path, monkeypatch):
    fill(fake_hub, pose_checkpoints, detector_checkpoints)
    path = hub.ensure_model()
    assert path.parent == tmp_path / 'converted'
    direct = superanimal_jax.convert(pose=pose_checkpoints['dlc3'], detector=detector_checkpoints['dlc3'],
                                     out=tmp_path / 'direct')
    assert all(np.array_equal(a, b) for a, b in zip(params(path), params(direct), strict=True))
    monkeypatch.setattr(hub, 'convert', lambda **_: pytest.fail('converted twice'))
    assert hub.ensure_model() == path
    assert cli(['download']) == 0


def test_offline_without_weights_says_what_to_do(fake_hub, capsys):
    with pytest.raises(hub.HubError) as err:
        hub.ensure_model()
    for text in (hub.POSE_FILE, hub.DETECTOR_FILE, '--weights', 'superanimal-jax convert', hub.REPO_ID):
        assert text in str(err.value)
    assert cli(['analyze', __file__.replace('.py', '.mp4').replace('test_hub', 'missing')]) == 2
    assert cli(['download']) == 2
    assert hub.POSE_FILE in capsys.readouterr().err


def test_local_weights_need_no_hub(fake_hub, pose_checkpoints, detector_checkpoints, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', lambda *a, **k: pytest.fail('hub used'))
    first = hub.ensure_model(pose=pose_checkpoints['seed'], detector=detector_checkpoints['seed'])
    second = hub.ensure_model(pose=pose_checkpoints['dlc3'], detector=detector_checkpoints['dlc3'])
    assert first != second  # Different files, different cache entries (keyed by sha256) ...
    assert all(np.array_equal(a, b)
               for a, b in zip(params(first), params(second), strict=True))  # ... same params.
    with pytest.raises(FileNotFoundError, match='no such weight file'):
        hub.ensure_model(pose=tmp_path / 'nope.pt', detector=detector_checkpoints['dlc3'])


def test_interrupted_conversion_leaves_nothing(fake_hub, pose_checkpoints, detector_checkpoints, tmp_path,
                                               monkeypatch):
    real = hub.convert

    def interrupted(**kwargs):
        real(**kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, 'convert', interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.ensure_model(pose=pose_checkpoints['dlc3'], detector=detector_checkpoints['dlc3'])
    assert list((tmp_path / 'converted').iterdir()) == []
    monkeypatch.setattr(hub, 'convert', real)
    path = hub.ensure_model(pose=pose_checkpoints['dlc3'], detector=detector_checkpoints['dlc3'])
    assert superanimal_jax.load(path).detector is not None
