"""The pose converter: released formats, the exactly-once table, safe loading, model directories."""

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import superanimal_jax
from superanimal_jax import cli
from superanimal_jax.checkpoints.convert import convert_pose_file
from superanimal_jax.checkpoints.rules import convert_state_dict, flatten
from superanimal_jax.checkpoints.tables import pose_rules
from superanimal_jax.checkpoints.torch_file import read_checkpoint
from superanimal_jax.errors import CheckpointError, ConversionError, UnsafeCheckpointError
from superanimal_jax.io.files import sha256
from superanimal_jax.models.pose import POSE_VARIANTS, variables_shape

W32 = POSE_VARIANTS['hrnet_w32']
SPEC_KEYS = Path(__file__).parents[2] / 'shared' / 'specs' / 'pose_hrnet_w32_state_dict.tsv'


def convert_in_memory(state):
    return convert_state_dict(state, pose_rules(W32), variables_shape(W32), source='test')


def save(tmp_path, obj, name='weights.pt'):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.fixture(scope='module')
def converted(pose_checkpoints):
    return {fmt: convert_pose_file(path) for fmt, path in pose_checkpoints.items()}


def test_seed_and_dlc3_formats_give_identical_params(converted, pose_checkpoints):
    seed, dlc3 = flatten(converted['seed'][0]), flatten(converted['dlc3'][0])
    assert seed.keys() == dlc3.keys()
    for path in seed:
        np.testing.assert_array_equal(seed[path], dlc3[path], err_msg=path)
    ignored = {i['reason']: i['count'] for i in converted['seed'][1]['source']['ignored']}
    # timm's head: 30 tensors, 4 of them BatchNorm counters (ignored as such).
    assert ignored[next(r for r in ignored if 'classification head' in r)] == 26
    seed_keys = read_checkpoint(pose_checkpoints['seed'])['model_state_dict']
    assert sum(ignored.values()) + converted['seed'][1]['source']['loaded'] == len(seed_keys)


def dlc_parse_model_snapshot_keys(keys):
    """DeepLabCut's rule for the seed's pose_model.pth (``_parse_model_snapshot`` in
    ``modelzoo/utils.py``, the parent of commit ffcd2908c), re-expressed: drop timm's
    ``downsamp_modules``/``final_layer``/``classifier``, and where the first four parts are
    ``heads.bodypart.heatmap_head.model`` put ``deconv_layers.0`` in the fourth part."""
    out = []
    for key in keys:
        if key.startswith(('backbone.model.downsamp_modules.', 'backbone.model.final_layer',
                           'backbone.model.classifier')):
            continue
        parts = key.split('.')
        if parts[:4] == ['heads', 'bodypart', 'heatmap_head', 'model']:
            parts[3] = 'deconv_layers.0'
        out.append('.'.join(parts))
    return out


@pytest.mark.skipif(not SPEC_KEYS.exists(), reason='needs ../shared/specs beside the checkout')
def test_seed_fixture_has_the_released_layout(pose_checkpoints):
    """The seed-format file, read as DeepLabCut reads the released pose_model.pth, gives exactly
    DeepLabCut 3's 1,832 keys (so the fixture cannot drift from the real layout)."""
    seed = read_checkpoint(pose_checkpoints['seed'])
    assert list(seed) == ['model_state_dict']
    keys = list(seed['model_state_dict'])
    assert 'heads.bodypart.heatmap_head.model.weight' in keys and not any('incre_modules' in k for k in keys)
    spec = [line.split('\t')[0] for line in SPEC_KEYS.read_text().splitlines() if not line.startswith('#')]
    parsed = dlc_parse_model_snapshot_keys(keys)
    assert len(parsed) == len(set(parsed)) == len(spec) == 1832
    assert set(parsed) == set(spec)


def test_values_land_where_the_rules_say(converted, pose_state):
    variables = converted['dlc3'][0]
    conv = pose_state['backbone.model.stage3.3.fuse_layers.2.0.1.0.weight']
    np.testing.assert_array_equal(
        variables['params']['backbone']['stage3']['3']['fuse_layers']['2']['0']['1']['0']['kernel'],
        conv.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables['batch_stats']['backbone']['transition1']['1']['0']['1']['var'],
                                  pose_state['backbone.model.transition1.1.0.1.running_var'])
    head = pose_state['heads.bodypart.heatmap_head.deconv_layers.0.weight']  # (in, out, 1, 1)
    np.testing.assert_array_equal(variables['params']['head']['deconv']['kernel'][0, 0], head[:, :, 0, 0])


def test_bare_state_dict_converts(tmp_path, pose_state, converted):
    path = save(tmp_path, collections.OrderedDict((k, torch.from_numpy(v)) for k, v in pose_state.items()))
    variables, meta = convert_pose_file(path)
    assert meta['source']['format'] == 'bare state dict'
    expected = flatten(converted['dlc3'][0])
    for p, v in flatten(variables).items():
        np.testing.assert_array_equal(v, expected[p])


def test_missing_key_is_named(pose_state):
    state = dict(pose_state)
    del state['backbone.model.stage2.0.branches.1.3.bn2.running_var']
    with pytest.raises(ConversionError, match=r'missing keys: model variables that no key filled \(1\)'
                                              r'[\s\S]*batch_stats/backbone/stage2/0/branches/1/3/bn2/var'):
        convert_in_memory(state)


def test_unknown_key_is_named(pose_state):
    state = {**pose_state, 'backbone.model.extra_block.conv9.weight': np.zeros((2, 2, 1, 1), np.float32),
             'heads.bodypart.locref_head.weight': np.zeros(3, np.float32)}
    with pytest.raises(ConversionError) as err:
        convert_in_memory(state)
    assert 'heads.bodypart.locref_head.weight' in str(err.value)
    assert ('backbone.model.extra_block.conv9.weight -> params/backbone/extra_block/conv9/kernel'
            in str(err.value))


def test_wrong_shape_is_named(pose_state):
    state = {**pose_state, 'backbone.model.layer1.0.conv2.weight': np.zeros((64, 64, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r'layer1\.0\.conv2\.weight: shape \(64, 64, 1, 1\).*needs '
                                              r'\(3, 3, 64, 64\)') as err:
        convert_in_memory(state)
    assert 'missing keys' not in str(err.value)


def test_non_float_tensor_is_refused(pose_state):
    state = {**pose_state, 'backbone.model.bn1.weight': np.ones(64, np.int64)}
    with pytest.raises(ConversionError, match=r'bn1\.weight: dtype int64'):
        convert_in_memory(state)


def test_legacy_and_new_head_names_together_clash(pose_state):
    legacy = {k.replace('deconv_layers.0', 'model'): v for k, v in pose_state.items() if 'heatmap_head' in k}
    with pytest.raises(ConversionError, match='both fill params/head/deconv'):
        convert_in_memory({**pose_state, **legacy})


def test_head_named_model_0_is_refused(pose_state):
    """No released file names its head ``heatmap_head.model.0`` (DeepLabCut's own loader would fail
    on it), so the table has no rule for it: the keys are listed as unknown."""
    state = {k.replace('deconv_layers.0', 'model.0'): v for k, v in pose_state.items()}
    with pytest.raises(ConversionError) as err:
        convert_in_memory(state)
    message = str(err.value)
    assert 'unknown keys' in message
    assert 'heads.bodypart.heatmap_head.model.0.weight (32, 27, 1, 1)' in message
    assert 'heads.bodypart.heatmap_head.model.0.bias (27,)' in message
    assert 'params/head/deconv/kernel' in message  # ... and the head is missing.


def test_incre_modules_are_not_in_a_released_file(pose_state, pose_manifest):
    incre = {'backbone.model.incre_modules.0.0.conv1.weight': np.zeros((32, 32, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r'incre_modules\.0\.0\.conv1\.weight.*no such variable'):
        convert_in_memory({**pose_state, **incre})


def test_file_with_optimizer_state_converts(tmp_path, pose_checkpoints, converted):
    """An older DeepLabCut 3 snapshot: weights beside a real AdamW state, a MultiStepLR state, an
    epoch and metadata.  Only the weights are read; metadata.json says what else the file held."""
    seed = read_checkpoint(pose_checkpoints['seed'])['model_state_dict']
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in seed.items()
              if 'num_batches' not in k]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[160, 190], gamma=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    weights = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in seed.items())
    path = save(tmp_path, {'model_state_dict': weights, 'optimizer_state_dict': optimizer.state_dict(),
                           'scheduler': scheduler.state_dict(), 'epoch': 7,
                           'metadata': {'metrics': {'test.rmse': 3.5}, 'losses': [0.25, 0.125]}},
                'pose_model.pth')
    out = superanimal_jax.convert(pose=path, out=tmp_path / 'model')
    expected = flatten(converted['dlc3'][0])
    for p, v in flatten(superanimal_jax.load(out).pose.variables).items():
        np.testing.assert_array_equal(np.asarray(v), expected[p], err_msg=p)
    others = json.loads((out / 'metadata.json').read_text())['pose']['source']['other_entries_not_loaded']
    assert others['epoch'] == 7
    assert others['metadata'] == {'metrics': {'test.rmse': 3.5}, 'losses': [0.25, 0.125]}
    assert others['optimizer_state_dict']['state'] == f'dict of {len(params)} entries'
    group = others['optimizer_state_dict']['param_groups'][0]
    assert (group['lr'] == 1e-5 and group['betas'] == [0.9, 0.999]
            and group['params'] == f'list of {len(params)} entries')
    assert others['scheduler']['milestones'] == {'160': 1, '190': 1}


def test_truncated_file_fails_clearly(tmp_path, pose_checkpoints):
    data = pose_checkpoints['dlc3'].read_bytes()
    path = tmp_path / 'truncated.pt'
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated.pt'):
        superanimal_jax.convert(pose=path, out=tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = save(tmp_path, {'model': {'w': torch.zeros(1)}, 'metadata': _RunsCode(marker)})
    with pytest.raises(UnsafeCheckpointError, match='system'):
        superanimal_jax.convert(pose=path, out=tmp_path / 'out')
    assert not marker.exists()


def test_object_without_weights_is_refused(tmp_path):
    path = save(tmp_path, {'epoch': torch.zeros(1), 'config': {'lr': 1.0}})
    with pytest.raises(ConversionError, match=r"no weights found.*\['config', 'epoch'\]"):
        superanimal_jax.convert(pose=path, out=tmp_path / 'out')


def test_model_directory_round_trip(pose_model_dir, pose_checkpoints, converted):
    meta = json.loads((pose_model_dir / 'metadata.json').read_text())
    assert meta['pose']['source']['sha256'] == sha256(pose_checkpoints['seed'])
    assert meta['pose']['source']['format'] == 'seed (model_state_dict)'
    assert meta['pose']['keypoints'][:3] == ['nose', 'left_ear', 'right_ear']
    assert 'non-commercial' in meta['licence']
    model = superanimal_jax.load(pose_model_dir)
    assert model.keypoint_names == superanimal_jax.TOPVIEWMOUSE_KEYPOINTS
    expected = flatten(converted['dlc3'][0])
    for path, value in flatten(model.pose.variables).items():
        np.testing.assert_array_equal(np.asarray(value), expected[path], err_msg=path)


def test_existing_directory_is_not_overwritten_silently(pose_model_dir, pose_checkpoints):
    before = (pose_model_dir / 'metadata.json').read_text()
    with pytest.raises(FileExistsError, match='overwrite'):
        superanimal_jax.convert(pose=pose_checkpoints['seed'], out=pose_model_dir)
    assert (pose_model_dir / 'metadata.json').read_text() == before
    assert not [p for p in pose_model_dir.parent.iterdir() if p.name.startswith('.')]


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(superanimal_jax.ModelDirError, match='no such directory'):
        superanimal_jax.load(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(superanimal_jax.ModelDirError, match='metadata.json'):
        superanimal_jax.load(tmp_path / 'empty')


def test_cli_convert(tmp_path, pose_checkpoints, capsys):
    out = tmp_path / 'cli_model'
    assert cli.main(['convert', '--pose', str(pose_checkpoints['seed']), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'seed (model_state_dict)' in printed and str(out) in printed
    assert superanimal_jax.load(out).pose is not None
    assert cli.main(['convert', '--pose', str(tmp_path / 'missing.pt'), '--out', str(tmp_path / 'x')]) == 2
    assert 'missing.pt' in capsys.readouterr().err


def test_cli_converts_pose_and_detector_together(tmp_path, pose_checkpoints, detector_checkpoints, capsys):
    out = tmp_path / 'both'
    assert cli.main(['convert', '--pose', str(pose_checkpoints['seed']), '--detector',
                     str(detector_checkpoints['dlc3']), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'detector: superanimal_topviewmouse_fasterrcnn_resnet50_fpn_v2.pt' in printed
    assert '65 ignored (BatchNorm update counter' in printed
    model = superanimal_jax.load(out)
    assert model.pose is not None and model.detector is not None
    with pytest.raises(SystemExit):
        cli.main(['convert', '--out', str(tmp_path / 'none')])  # Neither --pose nor --detector.


def test_detector_formats_convert_identically_and_alone(tmp_path, detector_checkpoints):
    out = superanimal_jax.convert(detector=detector_checkpoints['seed'], out=tmp_path / 'seed')
    seed = superanimal_jax.load(out)
    assert seed.pose is None
    dlc3 = superanimal_jax.load(superanimal_jax.convert(detector=detector_checkpoints['dlc3'],
                                                       out=tmp_path / 'dlc3'))
    a, b = flatten(seed.detector.variables), flatten(dlc3.detector.variables)
    assert len(a) == 339 and a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)
    meta = json.loads((out / 'metadata.json').read_text())['detector']['source']
    assert meta['format'] == 'seed (model_state_dict)' and meta['loaded'] == 339


def test_detector_file_with_pose_weights_is_refused(tmp_path, pose_checkpoints):
    with pytest.raises(ConversionError, match='unknown keys'):
        superanimal_jax.convert(detector=pose_checkpoints['dlc3'], out=tmp_path / 'wrong')
    assert not (tmp_path / 'wrong').exists()
