"""Detector training steps against DeepLabCut 3.0.2's own (goldens from
``tests/reference/make_detector_train_fixtures.py``).

The reference ran DeepLabCut's Faster R-CNN in training mode (frozen BatchNorm statistics) on
three openfield frames with their labelled boxes (one, two and none), recording every step's
anchor labels and targets, both samplers' choices, the proposals, the RoI labels and targets and
the four losses, then three AdamW steps.  Here the same batch goes through our training path
with the reference's sampled choices (and, for the RoI stage, its proposals) injected, so that
everything downstream of the random draws is compared exactly; our own proposals are compared
with the reference's as sets.

Float32 backpropagation through a ResNet-50-FPN rounds differently in every implementation, so
float32 gradients and parameters are held to "no further from DeepLabCut's float64 result than
DeepLabCut's own float32 run is"; float64 agrees to rounding.  The float64 reference replays the
float32 run's draws and proposals (see the fixture script), so all three runs take the same
steps.  The train steps themselves (gradients, AdamW) are in the slow tier (``pytest -m slow``):
a Faster R-CNN step costs tens of seconds on a 2-core CPU.
"""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.checkpoints.rules import conv_kernel, flatten, linear_kernel
from superanimal_jax.checkpoints.tables import detector_rules
from superanimal_jax.models.detector import DetectorNetwork
from superanimal_jax.models.detector_training import LOSSES, ROI_SAMPLES, detector_losses, training_inputs
from superanimal_jax.ops import anchors as anchors_lib
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.data import bbox_from_keypoints
from superanimal_jax.training.detector_step import make_detector_train_step
from superanimal_jax.training.optim import make_optimizer
from superanimal_jax.training.project import read_project
from superanimal_jax.training.step import init_state
from superanimal_jax.transforms.normalize import normalize_crops

from conftest import FIXTURES, OPENFIELD_PROJECT

GOLDENS = ('detector_train_manifest.json',)
FRAMES = ('img0003.png', 'img0010.png', 'img0020.png')


@pytest.fixture(scope='module')
def golden():
    with (np.load(FIXTURES / 'detector_train_golden.npz') as g,
          np.load(FIXTURES / 'detector_train_golden_float64.npz') as g64):
        return dict(g), dict(g64), json.loads((FIXTURES / 'detector_train_manifest.json').read_text())


@pytest.fixture(scope='module')
def batch(golden):
    """The reference's batch, made here: normalised frames and xyxy boxes with validity."""
    from superanimal_jax.io.images import read_image

    g, _, manifest = golden
    project = read_project(OPENFIELD_PROJECT)
    folder = OPENFIELD_PROJECT / 'labeled-data' / 'm4s1'
    images = np.stack([np.asarray(normalize_crops(read_image(folder / f))) for f in FRAMES])
    images = images.astype(np.float32)
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(g['images_sha256'])
    xywh = g['boxes_xywh'].astype(np.float32)  # As DeepLabCut's float32 tensors: x + w in float32.
    valid = (xywh[..., 2] > 0) & (xywh[..., 3] > 0)  # DeepLabCut's get_target drops empty boxes.
    xyxy = np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], axis=-1)
    return {'image': images, 'boxes': np.where(valid[..., None], xyxy, 0).astype(np.float32),
            'box_valid': valid, 'project': project, 'manifest': manifest}


def test_boxes_from_keypoints_as_deeplabcut(batch, golden):
    g, _, manifest = golden
    project = batch['project']
    for (i, j), name in (((0, 0), 'img0003.png'), ((1, 0), 'img0010.png'), ((1, 1), 'img0020.png')):
        frame = project.images.index(f'labeled-data/m4s1/{name}')
        xy = project.keypoints[frame, 0]
        keypoints = np.concatenate([np.nan_to_num(xy), np.where(np.isnan(xy[:, :1]), 0, 2)], axis=1)
        np.testing.assert_allclose(bbox_from_keypoints(keypoints, 480, 640, manifest['margin']),
                                   g['boxes_xywh'][i, j], rtol=0, atol=1e-9)


@pytest.fixture(scope='module')
def network_and_variables(detector_variables):
    return DetectorNetwork(), detector_variables


def injected_step(g: dict, s: int, num_gt: int, frames: int = len(FRAMES)) -> dict:
    """The reference's draws (and proposals with ground truth appended) of step ``s`` for each of
    ``frames`` images, as our static-shape injection: proposals padded to 2000 + G rows, RoI
    samples to 512 slots in the reference's order (ascending proposal index)."""
    size = 2000 + num_gt
    out = {k: [] for k in ('rpn_positive', 'rpn_negative', 'proposals', 'proposal_valid', 'roi_index',
                           'roi_positive', 'roi_valid')}
    for i in range(frames):
        p = f'{s}/{i}/'
        out['rpn_positive'].append(g[p + 'rpn_pos'])
        out['rpn_negative'].append(g[p + 'rpn_neg'])
        proposals = g[p + 'all_proposals']
        n = len(proposals)
        out['proposals'].append(np.pad(proposals, ((0, size - n), (0, 0))))
        out['proposal_valid'].append(np.arange(size) < n)
        index = np.flatnonzero(g[p + 'roi_pos'] | g[p + 'roi_neg'])
        out['roi_index'].append(np.pad(index, (0, ROI_SAMPLES - len(index))).astype(np.int32))
        out['roi_positive'].append(np.pad(g[p + 'roi_pos'][index], (0, ROI_SAMPLES - len(index))))
        out['roi_valid'].append(np.arange(ROI_SAMPLES) < len(index))
    return {k: np.stack(v) for k, v in out.items()}


def losses_and_details(network, variables, batch, manifest, injected, dtype=jnp.float32):
    t = manifest['transform']

    @jax.jit
    def run(variables, images, boxes, valid, injected):
        x, size, b = training_inputs(images, boxes, min_size=t['min_size'], max_size=t['max_size'])
        sizes = jnp.tile(jnp.asarray(size, jnp.int32), (x.shape[0], 1))
        return detector_losses(network, variables, x, sizes, b, valid, jax.random.key(0), injected=injected,
                               with_details=True)

    cast = lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a  # noqa: E731
    return jax.device_get(run(jax.tree_util.tree_map(cast, variables), cast(batch['image']),
                              cast(batch['boxes']), batch['box_valid'],
                              jax.tree_util.tree_map(cast, injected)))


@pytest.fixture(scope='module')
def step0(network_and_variables, batch, golden):
    g, _, manifest = golden
    network, variables = network_and_variables
    return losses_and_details(network, variables, batch, manifest, injected_step(g, 0, 2))


def test_anchors_are_torchvisions(golden, step0):
    g, _, _ = golden
    _, details = step0
    x_shape = (416, 544)  # 480x640 at 400 / <= 667, padded to /32.
    grid = anchors_lib.grid_anchors(anchors_lib.fpn_feature_sizes(x_shape), x_shape)
    np.testing.assert_array_equal(grid, g['anchors'])
    assert details['rpn_labels'].shape[1] == len(g['anchors'])


def assert_targets_equal(ours, reference):
    """Regression targets: dx, dy bit-identical; dw, dh (a float32 ``log``, which XLA and torch's
    vectorised kernel each round their own way, within an ulp; times the weight 5: two ulps)."""
    np.testing.assert_array_equal(ours[:, :2], reference[:, :2])
    np.testing.assert_array_max_ulp(ours[:, 2:], reference[:, 2:], maxulp=2)


def test_rpn_labels_and_targets_identical(golden, step0):
    g, _, _ = golden
    _, details = step0
    for i in range(len(FRAMES)):
        labels = g[f'0/{i}/rpn_labels']
        np.testing.assert_array_equal(details['rpn_labels'][i], labels)
        assert_targets_equal(details['rpn_targets'][i][labels == 1], g[f'0/{i}/rpn_targets'])
    counts = [int((g[f'0/{i}/rpn_labels'] == 1).sum()) for i in range(len(FRAMES))]
    print(f'\nRPN positives per image {counts} (the image without boxes: none)')
    assert counts[2] == 0 and counts[0] > 0 and counts[1] > counts[0]


def test_roi_labels_and_targets_identical(golden, step0):
    g, _, _ = golden
    _, details = step0
    for i in range(len(FRAMES)):
        labels = g[f'0/{i}/roi_labels']
        n = len(labels)
        np.testing.assert_array_equal(details['roi_labels'][i][:n], labels)
        assert (details['roi_labels'][i][n:] == -1).all()  # Padding is never sampled.
        index = np.flatnonzero(g[f'0/{i}/roi_pos'] | g[f'0/{i}/roi_neg'])
        positive = g[f'0/{i}/sampled_labels'] > 0
        np.testing.assert_array_equal(labels[index], g[f'0/{i}/sampled_labels'])
        assert_targets_equal(details['roi_targets'][i][index][positive],
                             g[f'0/{i}/sampled_targets'][positive])


def test_four_losses_match(golden, step0):
    g, g64, _ = golden
    losses, _ = step0
    ours = np.array([float(losses[k]) for k in LOSSES])
    ref, exact = g['0/losses'], g64['0/losses']
    error = np.abs(ours - ref) / np.abs(ref)
    print('\n' + ', '.join(f'{k} {o:.7f} (DLC {r:.7f}, error {e:.1e})'
                           for k, o, r, e in zip(LOSSES, ours, ref, error)))
    assert error.max() <= 1e-5
    del exact  # The float64 reference starts from its own draws; compared in the float64 test.


def own_proposals(network, variables, batch, manifest):
    """Our proposals (no injection) for step 0: ``(B, 2000 + G, 4)`` and validity."""
    _, details = losses_and_details(network, variables, batch, manifest, None)
    return details['proposals'], details['proposal_valid']


def nearest(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference box, the index of the nearest of ours (max coordinate difference) and
    that distance."""
    distance = np.abs(ref[:, None, :] - ours[None, :, :]).max(-1)
    return distance.argmin(1), distance.min(1)


def test_proposals_are_the_same_set(network_and_variables, batch, golden):
    """Our 2,000 training proposals per image against DeepLabCut's, as sets.  Within 0.01 px but for
    the largest boxes, whose decoded sides carry the float32 noise of the RPN's deltas times their
    size: those are held to no further from DeepLabCut's float64 proposals than its own float32
    ones (same weights, same inputs; the proposals do not depend on the samplers)."""
    g, g64, manifest = golden
    network, variables = network_and_variables
    proposals, valid = own_proposals(network, variables, batch, manifest)
    for i in range(len(FRAMES)):
        ref, exact = g[f'0/{i}/proposals'], g64[f'0/{i}/native_proposals']
        ours = proposals[i][:2000][valid[i][:2000]]
        assert len(ours) == len(ref) == len(exact), (i, len(ours), len(ref), len(exact))
        index, error = nearest(ours, ref)
        assert len(set(index)) == len(ref)  # One to one.
        _, ours64 = nearest(ours.astype(np.float64), exact)
        _, own64 = nearest(ref.astype(np.float64), exact)
        print(f'\nimage {i}: {len(ref)} proposals; |ours - DLC float32| max {error.max():.2e} px, '
              f'{(error <= 0.01).sum()} within 0.01 px; against DLC float64: ours max {ours64.max():.2e}, '
              f'DLC float32 max {own64.max():.2e} px')
        assert np.median(error) <= 0.01 and (error <= 0.01).mean() >= 0.99
        assert ours64.max() <= max(0.01, 2 * own64.max())


@pytest.mark.slow  # Two float64 forward passes compile (about 30 s each), 4 GB: pytest -m slow.
def test_float64_proposals_and_targets_are_deeplabcuts(network_and_variables, batch, golden):
    """In float64, where the RPN's rounding noise is gone, our 2,000 proposals per image are
    DeepLabCut's float64 ones: one to one, every box within 1e-6 px (the float32 near-ties in
    NMS and the large boxes' delta noise above do not arise); and with its float64 draws the RPN
    and RoI regression targets are identical (no float32 ``log`` in the way)."""
    g, g64, manifest = golden
    _, variables = network_and_variables
    with jax.enable_x64(True):
        b64 = {**batch, 'boxes': boxes_in(batch, g, np.float64)}
        network = DetectorNetwork(dtype=jnp.float64)
        _, details = losses_and_details(network, variables, b64, manifest, None, dtype=np.float64)
        injected = injected_step(g64, 0, 2)
        injected['proposals'] = injected['proposals'].astype(np.float64)
        _, targets = losses_and_details(network, variables, b64, manifest, injected, dtype=np.float64)
    for i in range(len(FRAMES)):
        labels = g64[f'0/{i}/rpn_labels']
        np.testing.assert_array_equal(targets['rpn_labels'][i], labels)
        np.testing.assert_array_equal(targets['rpn_targets'][i][labels == 1], g64[f'0/{i}/rpn_targets'])
        index = np.flatnonzero(g64[f'0/{i}/roi_pos'] | g64[f'0/{i}/roi_neg'])
        positive = g64[f'0/{i}/sampled_labels'] > 0
        np.testing.assert_array_equal(targets['roi_labels'][i][index], g64[f'0/{i}/sampled_labels'])
        np.testing.assert_array_equal(targets['roi_targets'][i][index][positive],
                                      g64[f'0/{i}/sampled_targets'][positive])
    for i in range(len(FRAMES)):
        exact = g64[f'0/{i}/native_proposals']
        ours = details['proposals'][i][:2000][details['proposal_valid'][i][:2000]]
        assert len(ours) == len(exact) == 2000
        index, error = nearest(ours, exact)
        print(f'\nimage {i}: float64 proposals, max |ours - DLC float64| {error.max():.1e} px')
        assert len(set(index)) == len(exact) and error.max() <= 1e-6


# ------------------------------------------------------------------------------------------------
# Gradients and three AdamW steps

INVERSE = {conv_kernel: (3, 2, 0, 1), linear_kernel: (1, 0)}


def torch_view(tree: dict, keys) -> dict[str, np.ndarray]:
    """Our parameter (or gradient) tree in the reference's layout, by torch key."""
    flat = flatten(tree)
    table = detector_rules()
    out = {}
    for key in keys:
        key = str(key)
        rule = next(r for r in table.rules if r.apply(key) is not None)
        value = np.asarray(flat[rule.apply(key).removeprefix('params/')])
        if rule.transform in INVERSE:
            value = value.transpose(INVERSE[rule.transform])
        elif rule.transform.__name__.startswith('linear_after_flatten'):
            value = value.reshape(7, 7, 256, -1).transpose(3, 2, 0, 1).reshape(value.shape[-1], -1)
        out[key] = value
    return out


def at_stored(value: np.ndarray, key: str, g: dict) -> np.ndarray:
    index = g.get(f'grad_index/{key}')
    return value.ravel() if index is None else value.ravel()[index]


def boxes_in(batch, g: dict, dtype) -> np.ndarray:
    """The batch's xyxy boxes as the reference's run of that dtype has them: DeepLabCut adds
    ``x + w`` in the tensors' dtype, so the float64 run's corners are not the float32 ones."""
    if dtype == np.float32:
        return batch['boxes']
    xywh = g['boxes_xywh'].astype(dtype)  # Stored in float64 with the float32 golden.
    xyxy = np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], axis=-1)
    return np.where(batch['box_valid'][..., None], xyxy, 0)


def three_steps(network, variables, batch, golden_steps: dict, boxes: np.ndarray, dtype=np.float32) -> dict:
    """Three AdamW steps on the batch with ``golden_steps``' draws and proposals injected."""
    optimizer = make_optimizer(TrainConfig(learning_rate=1e-5, weight_decay=0.01), variables['params'],
                               steps_per_epoch=1000)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), tree)  # noqa: E731
    state = init_state(cast(variables['params']), optimizer, 0)
    step = make_detector_train_step(network, optimizer, with_grads=True)
    losses, grads = [], None
    x, size, boxes = jax.jit(lambda i, b: training_inputs(i, b, min_size=400, max_size=667))(
        np.asarray(batch['image'], dtype), boxes)
    data = {'image': x, 'image_size': np.tile(np.int32(size), (len(x), 1)), 'boxes': boxes,
            'box_valid': batch['box_valid']}
    for s in range(3):
        injected = injected_step(golden_steps, s, 2)
        injected['proposals'] = injected['proposals'].astype(dtype)
        state, metrics = step(state, cast(variables['batch_stats']), data, injected)
        losses.append([float(metrics[k]) for k in LOSSES])
        if s == 0:
            grads = jax.device_get(metrics['grads'])
    return {'losses': np.array(losses), 'grads': grads, 'params': jax.device_get(state['params'])}


@pytest.fixture(scope='module')
def ours32(network_and_variables, batch, golden):
    g, _, _ = golden
    network, variables = network_and_variables
    run = three_steps(network, variables, batch, g, batch['boxes'])
    return {**run, 'grads': torch_view(run['grads'], g['leaf_keys']),
            'params': torch_view(run['params'], g['leaf_keys'])}


def relative_l2(value, reference) -> float:
    return float(np.sqrt(((value - reference) ** 2).sum() / max((reference ** 2).sum(), 1e-300)))


@pytest.mark.slow  # Three minutes on 2 cores (three Faster R-CNN train steps compile and run): -m slow.
def test_float32_gradients_as_accurate_as_torchvisions(ours32, golden):
    g, g64, _ = golden
    rows = []
    for j, key in enumerate(g['leaf_keys']):
        key = str(key)
        ref32, ref64 = g[f'grad/{key}'].ravel().astype(np.float64), g64[f'grad/{key}'].ravel()
        value = at_stored(ours32['grads'][key], key, g).astype(np.float64)
        rows.append((key, relative_l2(value, ref64), relative_l2(ref32, ref64)))
    ours, own = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    worst = rows[int(ours.argmax())]
    print(f'\nfloat32 gradients over {len(rows)} leaves, relative L2 error against DLC float64: ours median '
          f'{np.median(ours):.2e} max {ours.max():.2e} ({worst[0]}); DLC float32 median {np.median(own):.2e} '
          f'max {own.max():.2e}')
    assert np.median(ours) <= 1.5 * np.median(own)
    assert ours.max() <= 2 * own.max(), worst


@pytest.mark.slow  # Shares the three steps above.
def test_three_adamw_steps(ours32, golden):
    """Three AdamW steps on the same batch with the reference's draws, float32: each step's four
    losses and the parameters after three steps no further from DeepLabCut's float64 run of the
    same steps than its own float32 run is.  (Adam's first steps move every weight by about +-lr
    whatever the size of its gradient, so weights whose gradients are float32 noise move apart.)"""
    g, g64, _ = golden
    ref = np.stack([g[f'{s}/losses'] for s in range(3)])
    exact = np.stack([g64[f'{s}/losses'] for s in range(3)])
    ours = np.abs(ours32['losses'] - exact) / np.abs(exact)
    own = np.abs(ref - exact) / np.abs(exact)
    vs32 = np.abs(ours32['losses'] - ref) / np.abs(ref)
    print(f'\nlosses over three steps, relative error against DLC float64: ours max {ours.max():.1e}, DLC '
          f'float32 max {own.max():.1e}; ours against DLC float32 max {vs32.max():.1e}')
    assert (ours <= np.maximum(2 * own, 1e-5)).all(), (ours, own)
    rows = []
    for j, key in enumerate(g['leaf_keys']):
        key = str(key)
        exact_params = g64[f'params3/{key}'].ravel()
        value = at_stored(ours32['params'][key], key, g).astype(np.float64)
        own = g[f'params3/{key}'].ravel() - exact_params
        rows.append((np.abs(value - exact_params).max(), np.abs(own).max()))
    ours_p, own_p = np.array(rows).T
    print(f'parameters after three steps, max |. - DLC float64| over {len(rows)} leaves: '
          f'ours {ours_p.max():.2e}, '
          f'DLC float32 {own_p.max():.2e} (lr 1e-5)')
    assert ours_p.max() <= max(2 * own_p.max(), 1e-7)
    assert np.median(ours_p) <= max(1.5 * np.median(own_p), 1e-7)


@pytest.mark.slow  # Minutes on 2 cores (a float64 Faster R-CNN train step compiles): pytest -m slow.
def test_float64_steps_equal_deeplabcut_float64(network_and_variables, batch, golden):
    """In float64, with the same draws and proposals as DeepLabCut's float64 run, the two
    implementations agree to rounding: each step's losses, every gradient leaf, and the
    parameters after three AdamW steps.  One exception is torch's: the RPN's labels are float32,
    and ``binary_cross_entropy_with_logits`` of float64 logits with float32 targets computes the
    loss *value* in float32 (its gradient stays float64), so the reported objectness loss is
    held to float32 rounding."""
    g, g64, _ = golden
    _, variables = network_and_variables
    with jax.enable_x64(True):
        run = three_steps(DetectorNetwork(dtype=jnp.float64), variables, batch, g64,
                          boxes_in(batch, g, np.float64), dtype=np.float64)
    exact = np.stack([g64[f'{s}/losses'] for s in range(3)])
    losses = np.abs(run['losses'] - exact) / np.abs(exact)
    grads_view = torch_view(run['grads'], g['leaf_keys'])
    params_view = torch_view(run['params'], g['leaf_keys'])
    grads = np.array([np.abs(at_stored(grads_view[str(k)], str(k), g) - g64[f'grad/{k}'].ravel()).max()
                      / max(float(g64['grad_maxabs'][j]), 1e-300) for j, k in enumerate(g['leaf_keys'])])
    params = np.array([np.abs(at_stored(params_view[str(k)], str(k), g) - g64[f'params3/{k}'].ravel()).max()
                       / max(float(g64['params3_maxabs'][j]), 1e-300) for j, k in enumerate(g['leaf_keys'])])
    print(f'\nfloat64: losses relative error per step and loss {losses.tolist()}; gradients relative '
          f'max-abs median {np.median(grads):.1e} max {grads.max():.1e}; params after 3 steps max '
          f'{params.max():.1e}')
    objectness = LOSSES.index('loss_objectness')
    assert np.delete(losses, objectness, axis=1).max() <= 1e-12, losses
    assert losses[:, objectness].max() <= 2e-7, losses
    assert grads.max() <= 1e-10 and params.max() <= 1e-10
