"""Video adaptation on an openfield clip against DeepLabCut 3.0.2's own (goldens from
``tests/reference/make_adaptation_fixtures.py``).

The reference ran ``video_inference_superanimal(..., video_adapt=True)`` on 30 openfield frames
with the synthetic weights: its first pass (``predictions.json``), its pseudo-labels
(``train.json``/``test.json``), and one step of each of the two trainings ``adaptation_train``
starts, built from the arguments it passed to ``apis.training.train`` (augmentation off).  Here:
* the same pseudo-labels from the same first pass, byte for byte;
* the pose batch from our in-memory items: bit-identical crops, the same targets;
* the detector batch through our collate with DeepLabCut's recorded scale and offset draws;
* (slow tier) one float64 step of each, on the same batch with the detector's sampler choices
  injected: loss, every gradient leaf and the parameters after the step of our AdamW with the
  adaptation's own settings (:func:`~superanimal_jax.adaptation.adapt.pose_train_config`).
"""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.adaptation.adapt import AdaptConfig, detector_train_config, pose_train_config
from superanimal_jax.adaptation.data import detector_items, pose_items
from superanimal_jax.adaptation.pseudo_labels import pseudo_labels, read_predictions
from superanimal_jax.io.images import read_image
from superanimal_jax.training.data import DataConfig, TrainData
from superanimal_jax.transforms import detector_augment

from conftest import FIXTURES

GOLDENS = ('adaptation/manifest.json',)
ADAPT = FIXTURES / 'adaptation'


@pytest.fixture(scope='module')
def manifest():
    return json.loads((ADAPT / 'manifest.json').read_text())


@pytest.fixture(scope='module')
def labels(manifest):
    settings = manifest['settings']
    return pseudo_labels(read_predictions(ADAPT / 'predictions.json'), manifest['clip']['frame_size'],
                         manifest['bodyparts'], num_frames=manifest['clip']['frames'],
                         pose_threshold=settings['pseudo_threshold'],
                         bbox_threshold=settings['bbox_threshold'])


def frame(name: str) -> np.ndarray:
    return read_image(ADAPT / 'frames' / name)


def test_pseudo_labels_from_an_openfield_first_pass(labels, tmp_path):
    """DeepLabCut's first pass on the clip, through our pseudo-labelling: its COCO files, byte for
    byte (every 10th frame, the boxes scoring >= 0.6, keypoints under 0.3 at (0, 0) and visible)."""
    paths = labels.write(tmp_path / 'pseudo_clip')
    for split in ('train', 'test'):
        assert paths[split].read_text() == (ADAPT / f'{split}.json').read_text(), split
    keypoints = np.array([a['keypoints'] for a in labels.train['annotations']]).reshape(-1, 3)
    assert list(labels.frames) == [0, 10, 20] and labels.num_annotations == 9
    assert ((keypoints[:, :2] == 0).all(axis=1) & (keypoints[:, 2] == 2)).any()  # Masked, "visible".


def test_first_pass_files_are_named_as_deeplabcuts(manifest, tmp_path):
    """The files DeepLabCut's first pass wrote beside the clip, and the pseudo-label folder name."""
    from superanimal_jax.io.results import result_paths

    ours = result_paths(tmp_path, 'clip', stage='before_adapt')
    names = [p.name for p in ours.values()] + ['clip.avi', 'pseudo_clip']
    assert sorted(names) == manifest['first_pass_files']


def test_pose_batch_is_deeplabcuts(labels, manifest):
    """The pose items, cropped from the detector's box with no margin, give DeepLabCut's crops bit
    for bit, its keypoints, offsets and scales, and its heatmap targets."""
    with np.load(ADAPT / 'pose_step.npz') as g:
        g = dict(g)
    ids = [a['id'] for a in labels.train['annotations']]
    chosen = [ids.index(i) for i in manifest['pose_step']['annotation_ids']]
    data = TrainData(pose_items(labels), DataConfig(batch_size=2), read_image=frame)
    samples = [data.sample(i, None) for i in chosen]
    images = np.stack([s['image'] for s in samples])
    np.testing.assert_array_equal(images[:, ::8, ::8], g['batch/image_strided'])
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(g['batch/image_sha256'])
    np.testing.assert_array_equal(np.stack([s['keypoints'] for s in samples]).astype(np.float32),
                                  g['batch/keypoints'])
    np.testing.assert_array_equal(np.stack([s['offsets'] for s in samples]), g['batch/offsets'])
    np.testing.assert_array_equal(np.stack([s['scales'] for s in samples]), g['batch/scales'])
    batch = data.collate(samples)
    error = np.abs(batch['targets'] - g['targets/heatmap']).max()
    print(f'\ntargets: max-abs error {error:.2e}')
    assert error <= 1e-6
    np.testing.assert_array_equal(batch['weights'], g['targets/weights'])
    assert manifest['pose_step']['masked_keypoints']  # The batch holds a keypoint masked to (0, 0).


class Replay:
    """A generator that returns DeepLabCut's recorded draws in order, each checked against the
    range ours would draw it from."""

    def __init__(self, draws):
        self.draws = [tuple(d) for d in draws]

    def uniform(self, low, high):
        kind, value = self.draws.pop(0)
        assert kind == 'uniform' and low <= value < high
        return value

    def integers(self, low, high):
        kind, value = self.draws.pop(0)
        assert kind == 'integers' and low <= value < high, (value, low, high)
        return value


def detector_batch(labels, manifest) -> tuple[np.ndarray, np.ndarray]:
    """Our detector item of DeepLabCut's frame, collated with its draws: image and xywh boxes."""
    from superanimal_jax.training.detector_data import DetectorData

    info = manifest['detector_step']
    items = detector_items(labels)
    index = [item.image for item in items].index(info['path'])
    config = detector_train_config(AdaptConfig())
    image, boxes = DetectorData(items, config, read_image=frame).sample(index, None)
    replay = Replay(info['draws'])
    size = detector_augment.collate_size(config.augmentation, replay, image.shape[:2])
    image, boxes = detector_augment.resize_and_crop(config.augmentation, replay, image, boxes, size)
    assert not replay.draws
    return image, boxes


def test_detector_batch_is_deeplabcuts(labels, manifest):
    """Our collate with DeepLabCut's scale and offsets: its size, its boxes exactly, and its image up to
    the antialiased resize's float32 rounding (``test_antialiased_resize_matches_torch``)."""
    with np.load(ADAPT / 'detector_step.npz') as g:
        g = dict(g)
    image, boxes = detector_batch(labels, manifest)
    assert image.shape == g['image'].shape[1:]
    error = np.abs(image - g['image'][0]).max()
    box_error = np.abs(boxes - g['boxes'][0]).max()
    print(f'\ncollated image: max-abs error {error:.2e}; boxes {box_error:.2e} px')
    assert error <= 2e-5 and box_error == 0


# ------------------------------------------------------------------------------------------------
# One float64 step of each

@pytest.mark.slow  # A float64 HRNet train step compiles and runs: about two minutes on 2 cores.
def test_pose_adaptation_step_float64(pose_state, labels, manifest):
    """One adaptation step of the full 27-keypoint pose model on DeepLabCut's batch, float64:
    loss, every gradient leaf, and the parameters after our AdamW step with the adaptation's
    settings (constant lr 1e-5, fresh moments, frozen BatchNorm)."""
    from test_train_parity import INVERSE, subset, torch_view

    from superanimal_jax.checkpoints.rules import convert_state_dict
    from superanimal_jax.checkpoints.tables import pose_rules
    from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork, variables_shape
    from superanimal_jax.training.optim import make_optimizer
    from superanimal_jax.training.step import init_state, make_train_step

    with np.load(ADAPT / 'pose_step.npz') as g:
        g = dict(g)
    config = POSE_VARIANTS['hrnet_w32']
    table = pose_rules(config)
    variables, _ = convert_state_dict(pose_state, table, variables_shape(config), source='synthetic')
    layout = {}
    for key in map(str, g['leaf_keys']):
        rule = next(r for r in table.rules if r.apply(key) is not None)
        layout[key] = (rule.apply(key).removeprefix('params/'), INVERSE.get(rule.transform))
    ids = [a['id'] for a in labels.train['annotations']]
    data = TrainData(pose_items(labels), DataConfig(batch_size=2), read_image=frame)
    batch = data.collate([data.sample(ids.index(i), None) for i in manifest['pose_step']['annotation_ids']])
    as64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)  # noqa: E731
    optimizer = make_optimizer(pose_train_config(AdaptConfig()), variables['params'], steps_per_epoch=2)
    with jax.enable_x64(True):
        state = init_state(as64(variables['params']), optimizer, 0)
        step = make_train_step(PoseNetwork(config, dtype=jnp.float64), optimizer, with_grads=True)
        state, metrics = step(state, as64(variables['batch_stats']), as64(batch))
        loss = float(metrics['loss'])
        grads, params = jax.device_get(metrics['grads']), jax.device_get(state['params'])
    grads, params = torch_view(grads, layout), torch_view(params, layout)
    keys = list(map(str, g['leaf_keys']))
    loss_error = abs(loss - float(g['loss'])) / float(g['loss'])
    grad_error = np.array([np.abs(subset(grads[k], k, g) - g[f'grad/{k}'].ravel()).max()
                           / float(g['grad_maxabs'][j]) for j, k in enumerate(keys)])
    param_error = np.array([np.abs(subset(params[k], k, g) - g[f'params1/{k}'].ravel()).max()
                            / float(g['params1_maxabs'][j]) for j, k in enumerate(keys)])
    print(f'\npose adaptation step, float64: loss {loss_error:.1e}; gradients relative max-abs median '
          f'{np.median(grad_error):.1e} max {grad_error.max():.1e}; params after the step max '
          f'{param_error.max():.1e}')
    # Both sides start from float32 targets (DeepLabCut's generator writes float32 heatmaps).
    assert loss_error <= 1e-7 and grad_error.max() <= 1e-6 and param_error.max() <= 1e-6


@pytest.mark.slow  # A float64 Faster R-CNN train step compiles and runs: minutes, about 8 GB.
def test_detector_adaptation_step_float64(detector_variables, labels, manifest):
    """One adaptation step of the detector on DeepLabCut's collated batch with its sampler
    choices injected, float64: the four losses, every gradient leaf, and the parameters after our
    AdamW step with the adaptation's settings."""
    from test_detector_train_parity import at_stored, injected_step, torch_view

    from superanimal_jax.models.detector import DetectorNetwork
    from superanimal_jax.models.detector_training import LOSSES, training_inputs
    from superanimal_jax.training.detector_step import make_detector_train_step
    from superanimal_jax.training.optim import make_optimizer
    from superanimal_jax.training.step import init_state

    with np.load(ADAPT / 'detector_step.npz') as g:
        g = dict(g)
    info = manifest['detector_step']
    xywh = g['boxes'].astype(np.float64)  # DeepLabCut adds x + w in the float64 run's dtype.
    valid = (xywh[..., 2] > 0) & (xywh[..., 3] > 0)
    xyxy = np.where(valid[..., None], np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], -1), 0)
    optimizer = make_optimizer(detector_train_config(AdaptConfig()), detector_variables['params'],
                               steps_per_epoch=1)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)  # noqa: E731
    with jax.enable_x64(True):
        state = init_state(cast(detector_variables['params']), optimizer, 0)
        step = make_detector_train_step(DetectorNetwork(dtype=jnp.float64), optimizer, with_grads=True)
        x, size, boxes = jax.jit(lambda i, b: training_inputs(i, b, min_size=info['transform']['min_size'],
                                                              max_size=info['transform']['max_size']))(
            g['image'].astype(np.float64), xyxy)
        data = {'image': x, 'image_size': np.tile(np.int32(size), (len(x), 1)), 'boxes': boxes,
                'box_valid': valid}
        injected = injected_step(g, 0, xyxy.shape[1], frames=1)
        injected['proposals'] = injected['proposals'].astype(np.float64)
        state, metrics = step(state, cast(detector_variables['batch_stats']), data, injected)
        losses = np.array([float(metrics[k]) for k in LOSSES])
        grads, params = jax.device_get(metrics['grads']), jax.device_get(state['params'])
    keys = g['leaf_keys']
    grads, params = torch_view(grads, keys), torch_view(params, keys)
    exact = g['0/losses']
    loss_error = np.abs(losses - exact) / np.abs(exact)
    grad_error = np.array([np.abs(at_stored(grads[str(k)], str(k), g) - g[f'grad/{k}'].ravel()).max()
                           / max(float(g['grad_maxabs'][j]), 1e-300) for j, k in enumerate(keys)])
    param_error = np.array([np.abs(at_stored(params[str(k)], str(k), g) - g[f'params1/{k}'].ravel()).max()
                            / max(float(g['params1_maxabs'][j]), 1e-300) for j, k in enumerate(keys)])
    print(f'\ndetector adaptation step, float64: losses {loss_error.tolist()}; gradients relative max-abs '
          f'median {np.median(grad_error):.1e} max {grad_error.max():.1e}; params after the step max '
          f'{param_error.max():.1e}')
    objectness = LOSSES.index('loss_objectness')  # torch computes its value in float32 (detector tests).
    assert np.delete(loss_error, objectness).max() <= 1e-12 and loss_error[objectness] <= 2e-7
    assert grad_error.max() <= 1e-10 and param_error.max() <= 1e-10
