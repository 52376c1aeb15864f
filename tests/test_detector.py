"""The whole detector stage against DeepLabCut 3.0.2's own run: two 480x640 openfield frames
(detected as one batch) and the same frames at 1280x720 and 1024x1024.

Goldens: ``tests/reference/make_detector_fixtures.py`` ran DeepLabCut's detector forward (torchvision
0.29, torch 2.15 CPU) on the same synthetic weights and kept its RPN proposals, box-predictor
outputs and detections.  Parity is checked stage by stage: proposals as a set, class logits for
the reference's own proposals, then the final detections.
"""

import hashlib

import numpy as np
import pytest

from superanimal_jax.checkpoints import synthetic
from superanimal_jax.inference.detector import Detector
from superanimal_jax.ops import roi_align
from superanimal_jax.ops.boxes import pairwise_iou

from conftest import FIXTURES

GOLDENS = ('detector_manifest.json',)  # Files recording the versions the goldens were made with (conftest).

LIMIT = 1e-4
CASES = ['0', '1', '720x1280', '1024x1024']  # Openfield frames 0 and 1, and resized.


@pytest.fixture(scope='module')
def detector(detector_variables):
    return Detector(detector_variables)


@pytest.fixture(scope='module')
def golden():
    with np.load(FIXTURES / 'detector_golden_pipeline.npz') as g:
        return dict(g)


@pytest.fixture(scope='module')
def frames_of(golden, detector_manifest):
    frames = {'0': golden['frames'][0:1], '1': golden['frames'][1:2]}
    for j, (name, digest) in enumerate(detector_manifest['resized_frames'].items()):
        height, width = map(int, name.split('x'))
        frame = synthetic.nearest_resize(golden['frames'][j], height, width)[None]
        assert hashlib.sha256(frame.tobytes()).hexdigest() == digest, f'{name} frame changed'
        frames[name] = frame
    return frames


@pytest.fixture(scope='module')
def detected(detector, golden, frames_of):
    batch = detector.detect(golden['frames'], with_taps=True)  # Both openfield frames at once.
    out = {str(i): {k: np.asarray(v)[i] for k, v in batch.items()} for i in range(2)}
    for name in CASES[2:]:
        found = detector.detect(frames_of[name], with_taps=True)
        out[name] = {k: np.asarray(v)[0] for k, v in found.items()}
    return out


def match(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference box, the nearest of ours (max coordinate difference) and the distance."""
    distance = np.abs(ref[:, None, :] - ours[None, :, :]).max(-1)
    return distance.argmin(1), distance.min(1)


@pytest.mark.parametrize('frame', CASES)
def test_proposals_are_the_same_set(detected, golden, frame):
    ref = golden[f'{frame}/proposals']
    ours = detected[frame]['proposals'][detected[frame]['proposal_valid']]
    assert len(ours) == len(ref)
    index, distance = match(ours, ref)
    print(f'frame {frame}: {len(ref)} proposals, max coordinate difference {distance.max():.2e} px')
    assert len(set(index)) == len(ref) and distance.max() < 0.02


@pytest.mark.parametrize('frame', CASES)
def test_roi_features_and_logits_for_the_reference_proposals(detector, golden, frames_of, frame):
    """RoI features pooled from our FPN for the reference's own proposals, and the box head's
    outputs on them."""
    from superanimal_jax.nn.fpn import LEVELS

    images, size = detector.preprocess(frames_of[frame])
    taps = detector.features(images)
    pyramid = [taps[f'fpn/{k}'][0] for k in LEVELS[:4]]
    scales = roi_align.infer_scales([p.shape for p in pyramid], size)
    pooled = roi_align.multiscale_roi_align(pyramid, golden[f'{frame}/proposals'], scales)
    ref = golden[f'{frame}/roi_features']  # First RoIs, every n-th channel (see the fixture script).
    ours = np.asarray(pooled)[:ref.shape[0], :, :, ::256 // ref.shape[-1]]
    error = np.abs(ours - ref).max() / golden[f'{frame}/roi_features_maxabs']
    print(f'frame {frame} roi_features: relative max-abs error {error:.1e}')
    assert error <= LIMIT
    logits, deltas = detector.classify(pooled)
    for name, ours in (('class_logits', logits), ('box_deltas', deltas)):
        ref = golden[f'{frame}/{name}']
        error = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
        print(f'frame {frame} {name}: relative max-abs error {error:.1e}')
        assert error <= LIMIT, (name, error)


@pytest.fixture(scope='module')
def golden64():
    with np.load(FIXTURES / 'detector_golden_float64.npz') as g:
        return dict(g)


def reference_rounding_iou(golden, golden64, frame) -> np.ndarray:
    """For each of the reference's float32 boxes, its IoU with the same box from the reference's
    own float64 run (matched by coordinates; the order can differ where scores nearly tie)."""
    ref32, ref64 = golden[f'{frame}/boxes'], golden64[f'{frame}/boxes']
    index, _ = match(ref64, ref32)
    return np.asarray(pairwise_iou(ref32.astype(np.float64), ref64[index])).diagonal()


@pytest.mark.parametrize('frame', CASES)
def test_detections_match(detected, golden, golden64, frame):
    ref_boxes, ref_scores = golden[f'{frame}/boxes'], golden[f'{frame}/scores']
    valid = detected[frame]['valid']
    boxes, scores = detected[frame]['boxes'][valid], detected[frame]['scores'][valid]
    assert len(boxes) == len(ref_boxes) > 0
    iou = np.diag(np.asarray(pairwise_iou(boxes, ref_boxes)))  # Both sorted by descending score.
    difference = np.abs(boxes - ref_boxes).max()
    own = reference_rounding_iou(golden, golden64, frame)
    worst = iou.argmin()
    print(f'frame {frame}: {len(boxes)} detections, max coordinate difference {difference:.1e} px, '
          f'min IoU {iou.min():.6f} (box {ref_boxes[worst].round(2).tolist()}; the reference\'s '
          f'own float32-vs-float64 IoU there {own[worst]:.6f}), '
          f'max |score diff| {np.abs(scores - ref_scores).max():.1e}')
    assert difference <= 0.01
    # IoU >= 0.999, except where the reference's own float32 result is further than that from
    # its float64 result: a 16 x 0.78 px sliver clipped at the 1280x720 border loses 0.0015 IoU
    # to a 0.001 px difference, and 0.008 between torchvision float32 and float64.
    assert np.all(iou >= np.minimum(0.999, own)), (iou.min(), own[iou.argmin()])
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=LIMIT)
    assert np.all(np.diff(scores) <= 0)


def test_detect_rejects_bad_frames(detector):
    with pytest.raises(ValueError, match='uint8'):
        detector.detect(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match='max_detections'):
        detector.detect(np.zeros((1, 64, 64, 3), np.uint8), max_detections=0)
