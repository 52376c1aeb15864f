"""The detector's training pieces on their own: matcher, sampler statistics, box coding, the data
pipeline, and box mAP against DeepLabCut's own ``compute_bbox_metrics``
(``tests/reference/make_box_metric_fixtures.py``)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.models.detector_training import training_inputs
from superanimal_jax.ops import boxes as box_ops
from superanimal_jax.ops import matching
from superanimal_jax.training.data import bbox_from_keypoints
from superanimal_jax.training.detector_data import (
    DetectorData,
    DetectorDataConfig,
    DetectorItem,
    detector_items,
)
from superanimal_jax.training.detector_evaluation import METRICS, box_metrics
from superanimal_jax.training.project import read_project
from superanimal_jax.transforms import detector_augment
from superanimal_jax.transforms.detector_augment import DetectorAugmentation

from conftest import FIXTURES, OPENFIELD_PROJECT

GOLDENS = ('box_metrics_golden.json',)


# ------------------------------------------------------------------------------------------------
# Matcher and sampler

def test_matcher_thresholds_low_quality_ties_and_padding():
    quality = jnp.array([[0.9, 0.5, 0.2, 0.1, 0.1],
                         [0.0, 0.0, 0.0, 0.25, 0.25],   # Best 0.25, attained twice: both kept (ties).
                         [0.0, 0.0, 0.0, 0.0, 0.0]])    # Padding: must match nothing.
    valid = jnp.array([True, True, False])
    plain = matching.match(quality, valid, 0.7, 0.3, allow_low_quality_matches=False)
    np.testing.assert_array_equal(plain, [0, -2, -1, -1, -1])
    low = matching.match(quality, valid, 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(low, [0, -2, -1, 1, 1])
    # Had the padding row been valid, its best (0) would make every column a low-quality match.
    everything = matching.match(quality, jnp.array([True, True, True]), 0.7, 0.3, True)
    assert (np.asarray(everything) >= 0).all()
    none = matching.match(quality, jnp.zeros(3, bool), 0.7, 0.3, True)
    np.testing.assert_array_equal(none, [-1] * 5)  # An image without boxes: all background.


def test_encode_inverts_decode():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (100, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 200, (100, 2))], 1).astype(np.float32)
    gt = (proposals + rng.normal(0, 5, (100, 4))).astype(np.float32)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
    for weights in (box_ops.RPN_WEIGHTS, box_ops.ROI_WEIGHTS):
        deltas = matching.encode(jnp.asarray(gt), jnp.asarray(proposals), weights)
        np.testing.assert_allclose(box_ops.decode(deltas, proposals, weights), gt, atol=2e-3)


@pytest.mark.parametrize('positives, negatives, want', [(1000, 5000, (128, 128)), (10, 5000, (10, 246)),
                                                        (5, 20, (5, 20)), (0, 300, (0, 256))])
def test_sampler_counts_and_no_overlap(positives, negatives, want):
    labels = np.full(8000, -1)
    order = np.random.default_rng(1).permutation(8000)
    labels[order[:positives]] = 1
    labels[order[positives:positives + negatives]] = 0
    index, is_pos, valid = jax.jit(matching.sample, static_argnums=(2, 3))(
        jax.random.key(3), jnp.asarray(labels), 256, 0.5)
    index, is_pos, valid = map(np.asarray, (index, is_pos, valid))
    chosen_pos, chosen_neg = index[valid & is_pos], index[valid & ~is_pos]
    assert (len(chosen_pos), len(chosen_neg)) == want
    assert (labels[chosen_pos] == 1).all() and (labels[chosen_neg] == 0).all()  # Never an ignored anchor.
    assert len(set(index[valid])) == valid.sum()  # No element twice.
    assert not valid[valid.sum():].any()  # Valid slots first.
    pos_mask, neg_mask = matching.masks_of(index, is_pos, valid, 8000)
    assert not (np.asarray(pos_mask) & np.asarray(neg_mask)).any()
    assert np.asarray(pos_mask).sum() == want[0] and np.asarray(neg_mask).sum() == want[1]


def test_sampler_choice_is_uniform():
    """20 positives, 10 taken per draw, 4000 draws: each is taken 2000 times in expectation
    (binomial, sd 32); every count within 5 sd, and the counts' spread is binomial."""
    labels = jnp.asarray(np.r_[np.ones(20), np.full(100, -1)].astype(np.int32))
    keys = jax.random.split(jax.random.key(7), 4000)
    index, is_pos, valid = jax.vmap(lambda k: matching.sample(k, labels, 20, 0.5))(keys)
    chosen = np.asarray(index)[np.asarray(valid & is_pos)]
    counts = np.bincount(chosen, minlength=120)
    assert counts[20:].sum() == 0 and counts.sum() == 40000
    sd = np.sqrt(4000 * 0.5 * 0.5)
    assert np.abs(counts[:20] - 2000).max() < 5 * sd, counts[:20]
    assert 0.5 * sd < counts[:20].std() < 1.6 * sd


def test_smooth_l1_is_torchs():
    x = jnp.array([-1.0, -0.1, 0.0, 0.05, 0.2, 3.0])
    beta = 1 / 9
    expected = np.where(np.abs(x) < beta, 0.5 * np.asarray(x) ** 2 / beta, np.abs(x) - 0.5 * beta)
    np.testing.assert_allclose(matching.smooth_l1(x, beta), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Data

def test_detector_items_are_boxes_from_keypoints():
    project = read_project(OPENFIELD_PROJECT)
    frames = list(range(len(project.images)))
    items = detector_items(project, frames, sizes=dict.fromkeys(frames, (480, 640)), margin=25)
    for f, item in zip(frames, items):
        xy = project.keypoints[f, 0]
        keypoints = np.concatenate([np.nan_to_num(xy), np.where(np.isnan(xy[:, :1]), 0, 2)], axis=1)
        np.testing.assert_array_equal(item.boxes, bbox_from_keypoints(keypoints, 480, 640, 25)[None])


def test_collate_size_follows_deeplabcut_rules():
    config = DetectorAugmentation()
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = detector_augment.collate_size(config, rng, (480, 640))
        assert h % 32 == 0 and w % 32 == 0 and 192 <= h <= 480 and w >= h
        assert abs(w / h - 4 / 3) < 0.2
    h, w = detector_augment.collate_size(config, np.random.default_rng(1), (2000, 200))  # Aspect capped at 2.
    assert h <= 2 * w + 32


def test_antialiased_resize_matches_torch():
    import torch  # A test dependency (pyproject's [test] extra): never skipped.

    image = np.random.default_rng(0).standard_normal((120, 160, 3)).astype(np.float32)
    for size in ((48, 64), (77, 101), (120, 160)):
        ours = detector_augment.resize_antialiased(image, *size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size,
                                              mode='bilinear', align_corners=False, antialias=True)
        np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=2e-5)


def test_host_transform_matches_the_jitted_one():
    image = np.random.default_rng(0).standard_normal((120, 160, 3)).astype(np.float32)
    boxes = np.array([[10.0, 20.0, 50.0, 90.0]], np.float32)
    host, size, host_boxes = detector_augment.torchvision_transform(image, boxes, 200, 300)
    jitted, size2, jit_boxes = training_inputs(jnp.asarray(image[None]), jnp.asarray(boxes[None]),
                                               min_size=200, max_size=300)
    assert size == size2 == (200, 266)
    np.testing.assert_allclose(host, np.asarray(jitted)[0, :200, :266], atol=2e-6)
    np.testing.assert_array_equal(host_boxes, np.asarray(jit_boxes)[0])


def white_box_frame(box) -> np.ndarray:
    frame = np.zeros((240, 320, 3), np.uint8)
    x, y, w, h = (int(v) for v in box)
    frame[y:y + h, x:x + w] = 255
    return frame


def bright_extent(image: np.ndarray, threshold: float) -> np.ndarray:
    ys, xs = np.nonzero(image.mean(-1) > threshold)
    return np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], np.float64)


@pytest.mark.parametrize('seed', range(6))
def test_augmented_boxes_follow_the_image(seed):
    """Flip, affine and the resize collate move a white rectangle and its box alike."""
    box = np.array([[60.0, 50.0, 100.0, 70.0]])
    config = DetectorAugmentation(hflip_p=0.5, affine_p=1.0, rotate=0.0)  # Rotation enlarges boxes by design.
    rng = np.random.default_rng(seed)
    image, boxes = detector_augment.augment_frame(config, rng, white_box_frame(box[0]), box)
    np.testing.assert_allclose(bright_extent(image, 0.0), boxes[0], atol=1.01)
    size = detector_augment.collate_size(config, rng, image.shape[:2])
    out, moved = detector_augment.resize_and_crop(config, rng, image, boxes, size)
    assert out.shape[:2] == size
    if moved[0, 2] > 4 and moved[0, 3] > 4:
        np.testing.assert_allclose(bright_extent(out, 0.5), moved[0], atol=2.01)


def test_rotation_keeps_the_content_inside_the_box():
    box = np.array([[100.0, 80.0, 80.0, 40.0]])
    image, boxes = detector_augment.affine(white_box_frame(box[0]), box, 25.0, (7, -5))
    x, y, w, h = bright_extent(image, 128)
    bx, by, bw, bh = boxes[0]
    assert bx - 1 <= x and by - 1 <= y and x + w <= bx + bw + 1 and y + h <= by + bh + 1


def test_batches_are_deterministic_padded_and_valid(tmp_path):
    frames = [white_box_frame([20 + 10 * i, 30, 60, 50]) for i in range(3)]
    items = [DetectorItem(str(i), np.array([[20.0 + 10 * i, 30, 60, 50]])) for i in range(2)]
    items.append(DetectorItem('2', np.zeros((0, 4))))  # A frame without boxes.
    data = DetectorData(items, DetectorDataConfig(batch_size=2, min_size=128, max_size=200), seed=3,
                        read_image=lambda p: frames[int(p)])
    try:
        a, b = data.batch(0, 1), data.batch(0, 1)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert data.max_boxes == 1 and data.steps_per_epoch == 2
        assert a['image'].shape[1] % 32 == 0 and a['image'].shape[2] % 32 == 0
        assert a['image_valid'].tolist() == [True, False]  # 3 items, batch 2: the last batch is padded.
        assert not a['box_valid'][1].any()
        plain = data.batch(0, 0, augment_items=False)
        assert plain['image_size'].tolist() == [[128, 170]] * 2
        order = data.order(0)[:2]
        for row, i in enumerate(order):
            expected = np.array([20.0 + 10 * i, 30, 80.0 + 10 * i, 80]) * np.array([170 / 320, 128 / 240] * 2)
            if len(items[i].boxes):
                np.testing.assert_allclose(plain['boxes'][row, 0], expected, rtol=1e-6)
        assert not np.array_equal(data.batch(1, 0)['image'], data.batch(0, 0)['image'])
    finally:
        data.close()


# ------------------------------------------------------------------------------------------------
# Box metrics

@pytest.mark.parametrize('case', ['mixed', 'no_ground_truth', 'no_detection', 'perfect'])
def test_box_metrics_equal_deeplabcuts(case):
    golden = json.loads((FIXTURES / 'box_metrics_golden.json').read_text())['cases'][case]
    ours = box_metrics({k: {**v, 'bboxes': np.asarray(v['bboxes'], np.float64).reshape(-1, 4)}
                        for k, v in golden['ground_truth'].items()},
                       {k: {'bboxes': np.asarray(v['bboxes'], np.float64).reshape(-1, 4),
                            'scores': np.asarray(v['scores'])} for k, v in golden['detections'].items()})
    assert set(ours) == set(METRICS) == set(golden['metrics'])
    for name in METRICS:
        assert ours[name] == pytest.approx(golden['metrics'][name], abs=1e-9), name


def test_box_metrics_need_the_same_images():
    with pytest.raises(ValueError, match='ground truth for 1 images'):
        box_metrics({'a': {'bboxes': np.zeros((0, 4)), 'width': 1, 'height': 1}}, {})
