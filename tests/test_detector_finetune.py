"""Detector fine-tuning end to end on the vendored openfield project: the loop, exact resume after
a kill, the model directory it writes, and the ``train --detector-epochs`` command.

Small images (torchvision's transform at 128 / <= 171) and the resize collate off keep every run
to one compiled step shape; the compilation cache (conftest) makes the runs after the first cheap.
A step still costs seconds on a CPU whatever the image size (the box head runs its four 3x3
convolutions on 512 sampled RoIs per image, as in torchvision), so the runs of more than a step
are in the slow tier (``pytest -m slow``).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import superanimal_jax
from superanimal_jax import cli
from superanimal_jax.checkpoints import model_dir
from superanimal_jax.checkpoints.rules import flatten
from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector
from superanimal_jax.transforms.detector_augment import DetectorAugmentation

from conftest import OPENFIELD_PROJECT

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(batch_size=1, min_size=128, max_size=171, train_fraction=1.0, workers=1, log_interval=1,
             augmentation=DetectorAugmentation(collate=False))


@pytest.fixture(scope='module')
def detector_model(detector_variables, tmp_path_factory) -> Path:
    """A model directory with the calibrated synthetic detector (no pose network)."""
    return model_dir.write(tmp_path_factory.mktemp('detector') / 'model', {'detector': detector_variables},
                           {'detector': {'variant': 'fasterrcnn_resnet50_fpn_v2', 'num_classes': 2}})


RESUMABLE = dict(steps=3, save_interval_steps=2, **QUICK)
WORKER = textwrap.dedent(f'''
    import os, signal, sys
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
    from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector
    from superanimal_jax.transforms.detector_augment import DetectorAugmentation
    project, model, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    first = []
    def hook(step, metrics):
        first.append(step)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    config = DetectorTrainConfig(**{RESUMABLE!r})
    fine_tune_detector(project, model, out, config, callbacks=[hook], progress=False)
    print('first step', first[0])
''')


def run_worker(*args):
    return subprocess.run([sys.executable, '-c', WORKER, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)})


@pytest.mark.slow  # About three minutes on 2 cores: pytest -m slow.
def test_killed_run_resumes_bit_identically(detector_model, tmp_path):
    """Three steps of one frame with flips and affines, checkpoint at step 2; killed at step 3,
    rerun: the same detector to the bit and the same log."""
    whole = fine_tune_detector(OPENFIELD_PROJECT, detector_model, tmp_path / 'whole',
                               DetectorTrainConfig(**RESUMABLE), progress=False)
    losses = [r['loss'] for r in map(json.loads, (tmp_path / 'whole' / 'log.jsonl').read_text().splitlines())
              if 'loss' in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    killed = run_worker(OPENFIELD_PROJECT, detector_model, tmp_path / 'killed', 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / 'killed' / 'model').exists()
    resumed = run_worker(OPENFIELD_PROJECT, detector_model, tmp_path / 'killed', 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert int(resumed.stdout.split('first step')[1]) == 3, resumed.stdout  # After the checkpoint at 2.
    a = flatten(superanimal_jax.load(whole['paths']['model']).detector.variables)
    b = flatten(superanimal_jax.load(tmp_path / 'killed' / 'model').detector.variables)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)
    logs = [(tmp_path / d / 'log.jsonl').read_text() for d in ('whole', 'killed')]
    assert logs[0] == logs[1]
    # The detector moved, BatchNorm statistics did not (frozen, as DeepLabCut's freeze_bn_stats).
    source = flatten(superanimal_jax.load(detector_model).detector.variables)
    moved = [p for p in a if p.startswith('params')
             and not np.array_equal(np.asarray(a[p]), np.asarray(source[p]))]
    assert len(moved) > 0.9 * sum(p.startswith('params') for p in a)
    for path in (p for p in a if p.startswith('batch_stats')):
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(source[path]), err_msg=path)
    metadata = json.loads((whole['paths']['model'] / 'metadata.json').read_text())
    assert metadata['detector']['fine_tuned']['steps'] == 3


def test_resuming_with_other_settings_is_refused(detector_model, tmp_path):
    config = DetectorTrainConfig(steps=1, **QUICK)
    fine_tune_detector(OPENFIELD_PROJECT, detector_model, tmp_path / 'run', config, progress=False)
    other = DetectorTrainConfig(steps=2, **{**QUICK, 'batch_size': 2})
    with pytest.raises(ValueError, match='batch_size: 1 -> 2'):
        fine_tune_detector(OPENFIELD_PROJECT, detector_model, tmp_path / 'run', other, progress=False)


def test_model_without_detector_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(superanimal_jax.ModelDirError, match='no detector'):
        fine_tune_detector(OPENFIELD_PROJECT, tiny_model_dir, tmp_path / 'run', DetectorTrainConfig(steps=1))


def test_cli_checks_epochs(detector_model, tmp_path, capsys):
    base = ['train', '--project', str(OPENFIELD_PROJECT), '--model', str(detector_model),
            '--out', str(tmp_path)]
    assert cli.main(base + ['--pose-epochs', '0']) == 2
    assert '--pose-epochs 0 trains nothing' in capsys.readouterr().err
    assert cli.main(base + ['--detector-epochs', '-1']) == 2


@pytest.mark.slow  # Minutes on 2 cores: torchvision's full 800-pixel transform, compiled per batch size.
def test_cli_trains_the_detector_into_the_model_directory(detector_model, tmp_path, capsys):
    """``train --detector-epochs 1 --pose-epochs 0``: DeepLabCut's defaults (augmentation, resize
    collate, 800-pixel transform), box mAP on the test frames before and after, and ``OUT/model``
    holding the fine-tuned detector, which ``evaluate`` scores again the same."""
    code = cli.main(['train', '--project', str(OPENFIELD_PROJECT), '--model', str(detector_model), '--out',
                     str(tmp_path / 'run'), '--detector-epochs', '1', '--pose-epochs', '0',
                     '--train-fraction', '0.67', '--workers', '1'])
    assert code == 0
    out = capsys.readouterr().out
    assert 'test.mAP@50:95' in out and 'model:' in out
    model = superanimal_jax.load(tmp_path / 'run' / 'model')
    tuned = flatten(superanimal_jax.load(tmp_path / 'run' / 'detector' / 'model').detector.variables)
    for path, value in flatten(model.detector.variables).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(tuned[path]))
    log = (tmp_path / 'run' / 'detector' / 'log.jsonl').read_text()
    records = [json.loads(line) for line in log.splitlines()]
    last = [r for r in records if 'test.mAP@50:95' in r][-1]
    assert cli.main(['evaluate', '--project', str(OPENFIELD_PROJECT),
                     '--model', str(tmp_path / 'run' / 'model'),
                     '--split', str(tmp_path / 'run' / 'detector' / 'split.json')]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results['test.box.mAP@50:95'] == pytest.approx(last['test.mAP@50:95'], abs=1e-9)
