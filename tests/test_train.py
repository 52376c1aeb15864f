"""Fine-tuning: project reader, data pipeline, modes, the training loop, resume, export, CLI.

Parity of the training step itself with DeepLabCut is in ``test_train_parity.py``; these tests
run the whole loop on the tiny HRNet (random weights) and the vendored openfield project.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import superanimal_jax
from superanimal_jax import cli
from superanimal_jax.checkpoints.rules import flatten
from superanimal_jax.errors import NonFiniteLossError, ProjectError
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.data import DataConfig, TrainData
from superanimal_jax.training.evaluation import evaluate
from superanimal_jax.training.loop import train
from superanimal_jax.training.modes import init_variables, make_items, make_task
from superanimal_jax.training.optim import lr_schedule
from superanimal_jax.training.project import read_project
from superanimal_jax.training.targets import heatmap_targets, weighted_mse
from superanimal_jax.transforms.augment import TrainAugmentation

from conftest import OPENFIELD_PROJECT, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
# The tiny-model runs share one set of shapes and constants (batch 2, 4 items a split, lr 1e-3),
# so their train step compiles once (conftest's compilation cache), subprocesses included.
QUICK = dict(batch_size=2, eval_interval=1000, log_interval=1, train_fraction=0.67, workers=1,
             learning_rate=1e-3)


def copy_project(tmp_path) -> Path:
    dst = tmp_path / 'project'
    shutil.copytree(OPENFIELD_PROJECT, dst)
    return dst


# ----------------------------------------------------------------------------- Project reader

def test_project_reads_h5_and_csv_alike(tmp_path):
    project = read_project(OPENFIELD_PROJECT)
    assert project.bodyparts == ('snout', 'leftear', 'rightear', 'tailbase')
    assert project.individuals == ('single',) and project.keypoints.shape == (6, 1, 4, 2)
    assert project.images[0] == 'labeled-data/m4s1/img0003.png'
    names, channels = project.conversion_array(superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)
    assert names == project.bodyparts and channels.tolist() == [0, 1, 2, 13]

    csv_only = copy_project(tmp_path)
    (csv_only / 'labeled-data' / 'm4s1' / 'CollectedData_Pranav.h5').unlink()
    from_csv = read_project(csv_only)
    assert from_csv.images == project.images
    np.testing.assert_array_equal(from_csv.keypoints, project.keypoints)


def test_project_errors_name_the_problem(tmp_path):
    with pytest.raises(ProjectError, match='no config.yaml'):
        read_project(tmp_path)
    root = copy_project(tmp_path)
    (root / 'labeled-data' / 'm4s1' / 'img0010.png').unlink()
    with pytest.raises(ProjectError, match='missing.*img0010.png'):
        read_project(root)

    import pandas as pd

    root = copy_project(tmp_path / 'nan')
    labels = root / 'labeled-data' / 'm4s1' / 'CollectedData_Pranav.h5'
    (root / 'labeled-data' / 'm4s1' / 'CollectedData_Pranav.csv').unlink()
    frame = pd.read_hdf(labels)
    frame.iloc[2] = np.nan
    frame.to_hdf(labels, key='df_with_missing', mode='w')
    with pytest.raises(ProjectError, match='no labelled keypoint.*img0020.png'):
        read_project(root)
    assert len(read_project(root, drop_unlabeled=True).images) == 5

    root = copy_project(tmp_path / 'table')
    config = (root / 'config.yaml').read_text()
    (root / 'config.yaml').write_text(config.replace('snout: nose', 'muzzle: nose'))
    with pytest.raises(ProjectError, match="bodyparts the project does not have: \\['muzzle'\\]"):
        read_project(root).conversion_table()
    (root / 'config.yaml').write_text(config.replace('snout: nose', 'snout: trunk'))
    with pytest.raises(ProjectError, match="does not have: \\['trunk'\\]"):
        read_project(root).conversion_array(superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)


def test_split_is_deterministic_and_round_trips():
    project = read_project(OPENFIELD_PROJECT)
    a, b = project.split(0.5, seed=3), project.split(0.5, seed=3)
    assert a == b and len(a.test) == 3 and sorted(a.train + a.test) == list(range(6))
    assert project.split(0.5, seed=4) != a
    from superanimal_jax.training.project import Split

    assert Split.from_json(json.loads(json.dumps(a.to_json(project))), project) == a


# ----------------------------------------------------------------------------- Targets and data

def test_targets_follow_deeplabcut_visibility_rules():
    keypoints = np.array([[[10.0, 30.0, 2], [100.0, 100.0, 0], [50.0, 50.0, -1]]])
    targets, weights = heatmap_targets(keypoints, (64, 64))
    assert targets.shape == weights.shape == (1, 64, 64, 3)
    cell = np.unravel_index(np.argmax(targets[0, :, :, 0]), (64, 64))
    assert cell == (7, 2)  # 4 * 7 + 2 = 30, 4 * 2 + 2 = 10: the keypoint sits on a cell centre.
    assert targets[0, 7, 2, 0] == 1.0
    np.testing.assert_allclose(targets[0, 7, 3, 0], np.exp(-16 / (2 * (34 / 3) ** 2)), rtol=1e-7)
    assert not targets[0, :, :, 1:].any()
    assert (weights[0, :, :, :2] == 1).all() and (weights[0, :, :, 2] == 0).all()
    loss = weighted_mse(np.ones_like(targets), targets, weights)
    np.testing.assert_allclose(float(loss), ((1 - targets[..., :2]) ** 2).sum() / (2 * 64 * 64), rtol=1e-6)


def test_batches_are_deterministic_padded_and_resumable():
    project = read_project(OPENFIELD_PROJECT)
    task = make_task('convert', project, superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)
    sizes = {f: (480, 640) for f in range(6)}
    items = make_items(project, range(5), task, sizes=sizes)
    data = TrainData(items, DataConfig(batch_size=2, workers=2), seed=7)
    assert data.steps_per_epoch == 3
    a, b = data.batch(1, 0), data.batch(1, 0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(data.order(0), data.order(1))
    last = data.batch(0, 2)  # 5 items: the last batch holds one item and one blank.
    assert last['weights'][1].sum() == 0 and last['weights'][0].sum() > 0
    alone = TrainData(items, DataConfig(batch_size=1), seed=7)
    single = alone.collate([alone.sample(int(data.order(0)[4]), np.random.default_rng([7, 1, 0, 4]))])
    np.testing.assert_array_equal(single['image'][0], last['image'][0])
    np.testing.assert_allclose(float(weighted_mse(last['targets'] * 0.5, last['targets'], last['weights'])),
                               float(weighted_mse(single['targets'] * 0.5, single['targets'],
                                                  single['weights'])),
                               rtol=1e-6)

    it = data.iterator()
    seen = [next(it) for _ in range(4)]
    state = it.get_state()
    assert state == {'epoch': 1, 'step': 1}
    rest = next(data.iterator(state))
    np.testing.assert_array_equal(rest['image'], next(it)['image'])
    it.close()
    assert all(s['image'].shape == (2, 256, 256, 3) for s in seen)


def test_augmentation_changes_crops_but_not_labels_count():
    project = read_project(OPENFIELD_PROJECT)
    task = make_task('convert', project, superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)
    items = make_items(project, range(6), task, sizes={f: (480, 640) for f in range(6)})
    plain = TrainData(items, DataConfig(augmentation=TrainAugmentation.off()), seed=0)
    augmented = TrainData(items, DataConfig(), seed=0)
    differ = [not np.array_equal(plain.batch(0, s)['image'], augmented.batch(0, s)['image'])
              for s in range(6)]
    assert any(differ)  # Rotation and noise each apply with p = 0.5.
    assert augmented.batch(0, 0)['targets'].max() > 0.5


# ----------------------------------------------------------------------------- Modes

def test_modes_build_the_heads_deeplabcut_builds(pose_model_dir):
    project = read_project(OPENFIELD_PROJECT)
    sa = superanimal_jax.load(pose_model_dir).pose
    head = np.asarray(sa.variables['params']['head']['deconv']['kernel'])
    bias = np.asarray(sa.variables['params']['head']['deconv']['bias'])
    convert = make_task('convert', project, sa.keypoint_names)
    v = init_variables('convert', sa.variables, convert.source_channels, 4)
    np.testing.assert_array_equal(v['params']['head']['deconv']['kernel'], head[..., [0, 1, 2, 13]])
    np.testing.assert_array_equal(v['params']['head']['deconv']['bias'], bias[[0, 1, 2, 13]])
    np.testing.assert_array_equal(v['params']['backbone']['conv1']['kernel'],
                                  sa.variables['params']['backbone']['conv1']['kernel'])
    replay = make_task('replay', project, sa.keypoint_names)
    assert len(replay.keypoint_names) == 27 and replay.channels.tolist() == [0, 1, 2, 13]
    assert (init_variables('replay', sa.variables, None, 27)['params']['head']['deconv']['kernel'].shape
            == head.shape)
    transfer = make_task('transfer', project, sa.keypoint_names)
    t = init_variables('transfer', sa.variables, None, 4)['params']['head']['deconv']
    assert t['kernel'].shape == (1, 1, 32, 4) and not t['bias'].any()
    assert 0.0005 < t['kernel'].std() < 0.002 and transfer.keypoint_names == project.bodyparts


def test_evaluation_matches_bodyparts_by_name_or_conversion_table():
    import dataclasses

    from superanimal_jax.training.modes import evaluation_task

    project = read_project(OPENFIELD_PROJECT)
    sa = evaluation_task(project, superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)
    assert sa.channels.tolist() == [0, 1, 2, 13] and sa.project_columns.tolist() == [0, 1, 2, 3]
    # A model fine-tuned in convert mode on a table that left 'leftear' out predicts 3 bodyparts.
    partial = evaluation_task(project, ('snout', 'rightear', 'tailbase'))
    assert partial.bodyparts == ('snout', 'rightear', 'tailbase')
    assert partial.project_columns.tolist() == [0, 2, 3] and partial.channels.tolist() == [0, 1, 2]
    other = dataclasses.replace(project, config={**project.config, 'SuperAnimalConversionTables': {}})
    with pytest.raises(ProjectError, match='no SuperAnimalConversionTables'):
        evaluation_task(other, ('nose', 'tail'))


def test_replay_fills_unlabelled_keypoints_from_predictions():
    project = read_project(OPENFIELD_PROJECT)
    task = make_task('replay', project, superanimal_jax.TOPVIEWMOUSE_KEYPOINTS)
    xy = project.keypoints[0, 0]
    centre = xy.mean(axis=0)
    predicted = np.zeros((27, 3))
    predicted[:, :2] = centre
    predicted[:, 2] = 0.5
    predicted[[0, 1, 2, 13], :2] = xy  # Agrees with the labels: IoU 1.
    predicted[5, 2] = 0.05  # Below the replay threshold: masked.
    items = make_items(project, [0], task, sizes={0: (480, 640)}, pseudo={(0, 0): predicted})
    kp = items[0].keypoints
    np.testing.assert_array_equal(kp[[0, 1, 2, 13], :2], xy)
    assert (kp[[0, 1, 2, 13], 2] == 2).all() and kp[5, 2] == -1 and kp[6, 2] == 2
    np.testing.assert_array_equal(kp[6, :2], centre)
    far = predicted.copy()
    far[:, :2] += 300  # Another animal: labels kept, the rest masked.
    kp = make_items(project, [0], task, sizes={0: (480, 640)}, pseudo={(0, 0): far})[0].keypoints
    assert (kp[[0, 1, 2, 13], 2] == 2).all() and (np.delete(kp[:, 2], [0, 1, 2, 13]) == -1).all()


def test_config_is_validated():
    for bad in ({'eval_interval': 0}, {'steps': 0}, {'mode': 'finetune'}, {'milestone_lrs': (1e-6,)},
                {'prefetch': -1}, {'crop_margin': -2}, {'crop_size': (250, 256)}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_lr_schedule_uses_epoch_milestones():
    schedule = lr_schedule(TrainConfig(), steps_per_epoch=10)
    assert float(schedule(0)) == np.float32(1e-5) and float(schedule(1599)) == np.float32(1e-5)
    assert float(schedule(1600)) == np.float32(1e-6) and float(schedule(1899)) == np.float32(1e-6)
    assert float(schedule(1900)) == np.float32(1e-7)


# ----------------------------------------------------------------------------- The loop

def test_training_lowers_the_loss_and_exports_a_loadable_model(tiny_model_dir, tmp_path):
    config = TrainConfig(steps=16, **{**QUICK, 'eval_interval': 4}, save_interval_steps=8,
                         augmentation=TrainAugmentation.off())
    result = train(OPENFIELD_PROJECT, tiny_model_dir, tmp_path / 'run', config, progress=False)
    records = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert all(r['grad_norm'] > 0 and r['param_norm'] > 0 for r in records if 'loss' in r)
    assert {'test.rmse', 'test.mAP', 'train.rmse_pcutoff'} <= set(result['metrics'])
    model = superanimal_jax.load(result['paths']['model'])
    assert model.keypoint_names == ('snout', 'leftear', 'rightear', 'tailbase')
    assert model.pose.config.num_keypoints == 4
    for path, value in flatten(model.pose.variables['params']).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flatten(result['state']['params'])[path]))
    assert (tmp_path / 'run' / 'training.png').stat().st_size > 10_000
    assert (tmp_path / 'run' / 'model-best' / 'metadata.json').exists()
    split = json.loads((tmp_path / 'run' / 'split.json').read_text())
    assert len(split['test']) == 2 and split['seed'] == 1
    again = evaluate(OPENFIELD_PROJECT, result['paths']['model'],
                         split=tmp_path / 'run' / 'split.json', pcutoff=0.6, single_animal=False)
    assert again['test.rmse'] == pytest.approx(result['metrics']['test.rmse'], rel=1e-6)


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
    model = write_tiny_model(tmp_path / 'nan', nan_bias=True)
    with pytest.raises(NonFiniteLossError, match='at step 1 '):
        train(OPENFIELD_PROJECT, model, tmp_path / 'run', TrainConfig(steps=3, **QUICK), progress=False)


RESUMABLE = dict(steps=10, save_interval_steps=3, **QUICK)
WORKER = textwrap.dedent(f'''
    import os, signal, sys
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
    from superanimal_jax.training.loop import TrainConfig, train
    project, model, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    first = []
    def hook(step, metrics):
        first.append(step)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(project, model, out, TrainConfig(**{RESUMABLE!r}), callbacks=[hook], progress=False)
    print('first step', first[0])
''')


def run_worker(*args):
    # The environment carries conftest's compilation cache: the three runs compile once.
    return subprocess.run([sys.executable, '-c', WORKER, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)})


def test_killed_run_resumes_bit_identically(tiny_model_dir, tmp_path):
    train(OPENFIELD_PROJECT, tiny_model_dir, tmp_path / 'whole', TrainConfig(**RESUMABLE), progress=False)
    killed = run_worker(OPENFIELD_PROJECT, tiny_model_dir, tmp_path / 'killed', 8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / 'killed' / 'model').exists()
    resumed = run_worker(OPENFIELD_PROJECT, tiny_model_dir, tmp_path / 'killed', 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = int(resumed.stdout.split('first step')[1])
    assert first in (4, 7), resumed.stdout  # Restarted after the checkpoint at step 3 or 6.
    a = flatten(superanimal_jax.load(tmp_path / 'whole' / 'model').pose.variables)
    b = flatten(superanimal_jax.load(tmp_path / 'killed' / 'model').pose.variables)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)
    logs = [(tmp_path / d / 'log.jsonl').read_text() for d in ('whole', 'killed')]
    assert logs[0] == logs[1]  # The resumed log reads as one run, same losses to the bit.


def test_cli_train_and_evaluate(tiny_model_dir, tmp_path, capsys):
    code = cli.main(['train', '--project', str(OPENFIELD_PROJECT), '--model', str(tiny_model_dir), '--out',
                     str(tmp_path / 'run'), '--steps', '2', '--batch-size', '2', '--mode', 'transfer',
                     '--workers', '1', '--train-fraction', '0.67', '--lr', '1e-3'])
    assert code == 0
    out = capsys.readouterr().out
    assert 'test.rmse' in out and 'model:' in out
    assert cli.main(['evaluate', '--project', str(OPENFIELD_PROJECT),
                     '--model', str(tmp_path / 'run' / 'model'),
                     '--split', str(tmp_path / 'run' / 'split.json')]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {'train.rmse', 'test.mAP'} <= set(results)
    assert cli.main(['train', '--project', str(tmp_path), '--model', str(tiny_model_dir), '--out',
                     str(tmp_path / 'x')]) == 2
    assert 'no config.yaml' in capsys.readouterr().err
    # Resuming with other settings would mix two experiments: refused, naming what changed.
    assert cli.main(['train', '--project', str(OPENFIELD_PROJECT), '--model', str(tiny_model_dir), '--out',
                     str(tmp_path / 'run'), '--steps', '4', '--batch-size', '1', '--mode', 'transfer',
                     '--train-fraction', '0.67', '--lr', '1e-3']) == 2
    assert 'batch_size: 2 -> 1' in capsys.readouterr().err
