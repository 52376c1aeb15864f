"""Golden detector-network fixtures from DeepLabCut 3.0.2's Faster R-CNN (run inside .ref/).

    .ref/bin/python tests/reference/make_detector_fixtures.py --out tests/fixtures

1. Builds the detector exactly as DeepLabCut does for SuperAnimal-TopViewMouse
   (``DETECTORS.build``: torchvision ``fasterrcnn_resnet50_fpn_v2``, 2 classes, score 0.6) and
   records its key manifest.
2. Fills it with :mod:`superanimal_jax.checkpoints.synthetic` weights and calibrates every BatchNorm on real
   openfield frames run through DeepLabCut's own detector forward (one pass, BatchNorms in train
   mode); saves the statistics and the calibrated class-score bias (``detector_overrides.npz``).
3. Records network-level taps, preprocessing kept apart: the backbone input is given directly.
   Inputs: a seeded random tensor (1, 256, 320, 3) and one real frame put through torchvision's
   own ``GeneralizedRCNNTransform`` at a small size (min 128, max 160, so the golden stays small).
   Taps: C2-C5 and FPN levels (every ``SUBSAMPLE``-th row/column, full max-abs kept), RPN logits
   and deltas (full, torchvision's flattening order), box-head class logits and deltas on seeded
   random RoI features; RPN and box-head outputs also in float64 for the random input.
4. Runs DeepLabCut's detector forward on two whole 480x640 frames and keeps the RPN proposals, the
   box predictor's outputs and the final detections (``detector_golden_pipeline.npz``, with the
   frames), and the same detections in float64 (``detector_golden_float64.npz``).  Before
   that, the class-score bias is shifted so that about 20 proposals per frame score above the
   0.6 threshold (a realistic handful of detections after NMS).  The same for
   the two frames resized (nearest neighbour) to 1280x720 and 1024x1024, checked by sha256.
Takes about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

from _reference import DATA, calibrate, manifest_of, nhwc, normalize_crops, superanimal_config, synthetic

SEED = 0
CALIBRATION_FRAMES = ('img0000.png', 'img0030.png', 'img0060.png', 'img0090.png')
GOLDEN_FRAME = 'img0045.png'
PIPELINE_FRAMES = ('img0015.png', 'img0075.png')
ROI_ROWS, ROI_CHANNELS = 32, 16
OTHER_SIZES = ((720, 1280), (1024, 1024))  # Pipeline frame j resized (synthetic.nearest_resize).
DETECTIONS_PER_FRAME = 20  # Foreground bias: about this many proposals score above 0.6.
RPN_DELTA_GAIN = 0.1  # He-initialised 1x1 box regressors give deltas of +-2 (boxes up to e^4 times
# their anchor); a tenth gives the small refinements of a trained RPN.
SUBSAMPLE = 4
RANDOM_SHAPE = (256, 320)
NUM_ROIS = 16


def build_detector():
    from deeplabcut.pose_estimation_pytorch.models.detectors import DETECTORS

    cfg = superanimal_config()
    detector = DETECTORS.build(cfg['detector']['model'])
    detector.eval()  # Returns None on DeepLabCut's wrapper.
    return detector


def frames(names) -> np.ndarray:
    import cv2

    folder = DATA / 'labeled-data' / 'm4s1'
    return np.stack([cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names])


def as_torch_batch(normalised_nhwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(normalised_nhwc)).permute(0, 3, 1, 2).contiguous()


def network_taps(tv_model, images_nchw, roi_features_nchw) -> dict[str, np.ndarray]:
    """Run torchvision's sub-networks directly on an already-transformed batch."""
    import torch

    with torch.no_grad():
        body = tv_model.backbone.body(images_nchw)
        pyramid = tv_model.backbone.fpn(body)
        logits, deltas = tv_model.rpn.head(list(pyramid.values()))
        class_logits, box_deltas = tv_model.roi_heads.box_predictor(
            tv_model.roi_heads.box_head(roi_features_nchw))
    taps = {f'C{i + 2}': nhwc(c) for i, c in enumerate(body.values())}
    taps.update({f'fpn/{k}': nhwc(v) for k, v in pyramid.items()})
    n = images_nchw.shape[0]
    # (N, A, H, W) -> (N, H*W*A); (N, 4A, H, W) -> (N, H*W*A, 4): torchvision's flattening order.
    taps['rpn_logits'] = np.concatenate([nhwc(t).reshape(n, -1) for t in logits], axis=1)
    taps['rpn_deltas'] = np.concatenate([nhwc(t).reshape(n, -1, 4) for t in deltas], axis=1)
    taps['class_logits'] = class_logits.numpy().copy()
    taps['box_deltas'] = box_deltas.numpy().copy()
    return taps


def pipeline_outputs(detector, frames_uint8) -> list[dict[str, np.ndarray]]:
    """DeepLabCut's detector forward on whole frames, with the RPN proposals and the box
    predictor's outputs captured on the way."""
    import torch

    tv_model, seen = detector.model, {}
    hooks = [tv_model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=o[0])),
             tv_model.roi_heads.box_roi_pool.register_forward_hook(
                 lambda m, i, o: seen.update(roi_features=o)),
             tv_model.roi_heads.box_predictor.register_forward_hook(
                 lambda m, i, o: seen.update(class_logits=o[0], box_deltas=o[1]))]
    with torch.no_grad():
        _, detections = detector(as_torch_batch(np.asarray(normalize_crops(frames_uint8))))
    for h in hooks:
        h.remove()
    counts = [len(p) for p in seen['proposals']]
    splits = np.cumsum(counts)[:-1]
    logits = np.split(seen['class_logits'].numpy(), splits)
    deltas = np.split(seen['box_deltas'].numpy(), splits)
    pooled = np.split(nhwc(seen['roi_features']), splits)
    # RoI features are 12.5M values a frame: keep the first ROI_ROWS RoIs, every ROI_CHANNELS-th
    # channel, and the full max-abs.
    return [{'proposals': p.numpy().copy(), 'class_logits': cl, 'box_deltas': bd,
             'roi_features': f[:ROI_ROWS, :, :, ::ROI_CHANNELS].copy(),
             'roi_features_maxabs': np.float32(np.abs(f).max()),
             'boxes': d['boxes'].numpy().copy(), 'scores': d['scores'].numpy().copy()}
            for p, cl, bd, f, d in zip(seen['proposals'], logits, deltas, pooled, detections)]


def foreground_bias(detector, frames_uint8) -> np.ndarray:
    """The class-score bias that lets about DETECTIONS_PER_FRAME proposals per frame score > 0.6."""
    outputs = pipeline_outputs(detector, frames_uint8)
    margin = np.concatenate([o['class_logits'][:, 1] - o['class_logits'][:, 0] for o in outputs])
    wanted = np.log(0.6 / 0.4) + 0.1  # Just above the threshold.
    shift = wanted - np.quantile(margin, 1 - DETECTIONS_PER_FRAME * len(outputs) / margin.size)
    bias = detector.state_dict()['model.roi_heads.box_predictor.cls_score.bias'].numpy().copy()
    bias[1] += np.float32(shift)
    return bias


def compact(taps: dict, prefix: str) -> dict:
    out = {}
    for name, value in taps.items():
        if name.startswith(('C', 'fpn/')):
            out[f'{prefix}/maxabs/{name}'] = np.float32(np.abs(value).max())
            value = value[:, ::SUBSAMPLE, ::SUBSAMPLE]
        out[f'{prefix}/{name}'] = value
    return out


def main() -> None:
    import deeplabcut
    import torch
    import torchvision
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)

    detector = build_detector()
    tv_model = detector.model
    manifest = manifest_of(detector.state_dict())
    state = synthetic.synthetic_state_dict(manifest, seed=SEED)
    rpn_box = 'model.rpn.head.bbox_pred.weight'
    state[rpn_box] = state[rpn_box] * np.float32(RPN_DELTA_GAIN)
    detector.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    detector.eval()

    calibration = frames(CALIBRATION_FRAMES)
    calibrate(detector, as_torch_batch(np.asarray(normalize_crops(calibration))))
    overrides = {k: v.numpy().copy() for k, v in detector.state_dict().items()
                 if k.endswith(('running_mean', 'running_var'))}
    overrides[rpn_box] = state[rpn_box]
    overrides['model.roi_heads.box_predictor.cls_score.bias'] = foreground_bias(detector, calibration)
    state = synthetic.synthetic_state_dict(manifest, seed=SEED, overrides=overrides)
    detector.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    detector.eval()
    pipeline = {'frames': frames(PIPELINE_FRAMES)}
    for i, out in enumerate(pipeline_outputs(detector, pipeline['frames'])):
        pipeline.update({f'{i}/{k}': v for k, v in out.items()})
    other_frames = {}
    for j, (h, w) in enumerate(OTHER_SIZES):
        frame = synthetic.nearest_resize(pipeline['frames'][j], h, w)[None]
        name = f'{h}x{w}'
        other_frames[name] = hashlib.sha256(frame.tobytes()).hexdigest()
        pipeline.update({f'{name}/{k}': v for k, v in pipeline_outputs(detector, frame)[0].items()})

    random_input = synthetic.random_crops(RANDOM_SHAPE, 100, SEED)
    rois = np.random.default_rng([SEED, 11]).standard_normal((NUM_ROIS, 7, 7, 256)).astype(np.float32)
    small = GeneralizedRCNNTransform(min_size=128, max_size=160, image_mean=[0.485, 0.456, 0.406],
                                     image_std=[0.229, 0.224, 0.225])
    small.eval()
    frame = frames([GOLDEN_FRAME])
    real_input = nhwc(small(list(as_torch_batch(np.asarray(normalize_crops(frame)))))[0].tensors)

    golden = {'inputs/real': real_input}
    golden.update(compact(network_taps(tv_model, as_torch_batch(random_input), as_torch_batch(rois)),
                          'random'))
    golden.update(compact(network_taps(tv_model, as_torch_batch(real_input), as_torch_batch(rois)),
                          'real'))
    tv_model.double()
    taps64 = network_taps(tv_model, as_torch_batch(random_input).double(), as_torch_batch(rois).double())
    golden64 = {k: taps64[k] for k in ('rpn_logits', 'rpn_deltas', 'class_logits', 'box_deltas')}
    # The reference's own float64 detections: how far its float32 run is from exact arithmetic.
    pipeline_frames = {'0': pipeline['frames'][:1], '1': pipeline['frames'][1:]}
    for j, (h, w) in enumerate(OTHER_SIZES):
        pipeline_frames[f'{h}x{w}'] = synthetic.nearest_resize(pipeline['frames'][j], h, w)[None]
    for name, frame in pipeline_frames.items():
        with torch.no_grad():
            _, (found,) = detector(as_torch_batch(np.asarray(normalize_crops(frame))).double())
        golden64[f'{name}/boxes'] = found['boxes'].numpy().copy()
        golden64[f'{name}/scores'] = found['scores'].numpy().copy()

    np.savez_compressed(f'{args.out}/detector_golden.npz', **golden)
    np.savez_compressed(f'{args.out}/detector_golden_float64.npz', **golden64)
    np.savez_compressed(f'{args.out}/detector_golden_pipeline.npz', **pipeline)
    np.savez_compressed(f'{args.out}/detector_overrides.npz', **overrides)
    info = {
        'made_by': 'tests/reference/make_detector_fixtures.py',
        'versions': {'deeplabcut': deeplabcut.__version__, 'torchvision': torchvision.__version__,
                     'torch': torch.__version__, 'numpy': np.__version__},
        'seed': SEED, 'subsample': SUBSAMPLE, 'manifest': manifest,
        'random_input': {'shape': list(RANDOM_SHAPE), 'index': 100},
        'resized_frames': other_frames,
        'rois': {'count': NUM_ROIS, 'stream': [SEED, 11]},
        'state_sha256': hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest(),
    }
    with open(f'{args.out}/detector_manifest.json', 'w') as f:
        f.write(json.dumps(info) + '\n')


if __name__ == '__main__':
    main()
