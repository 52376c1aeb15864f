"""Golden pose fixtures from the real DeepLabCut 3.0.2 PoseModel (run inside the reference env).

    .ref/bin/python tests/reference/make_pose_fixtures.py --out tests/fixtures           # committed goldens
    .ref/bin/python tests/reference/make_pose_fixtures.py --out /tmp/live --full         # reference tier

What it does, all with DeepLabCut's own code (PoseModel, top_down_crop, build_transforms,
the HeatmapPredictor) and timm's:
1. Builds the SuperAnimal-TopViewMouse hrnet_w32 PoseModel and records its key manifest (plus
   timm's downsamp_modules/final_layer/classifier keys, which the seed's pose_model.pth carries).
2. Fills it with :mod:`superanimal_jax.checkpoints.synthetic` weights, calibrates every BatchNorm's running
   statistics on real openfield crops (one train-mode pass) and scales the head so heatmap
   maxima spread over [0, 1]; saves the calibrated statistics and the head gain.
3. Writes both released formats, reloads the DeepLabCut 3 file the way DeepLabCut does
   (``torch.load(weights_only=True)`` + strict ``load_state_dict``) and checks it regenerates.
4. Records taps (stem, layer1, stage2-4 branch outputs, heatmaps) and decoded keypoints on real
   crops and random inputs. Committed goldens keep full heatmaps and every 4th row/column of the
   intermediate taps (plus each tap's full max-abs); ``--full`` keeps everything.  Heatmaps of
   the same model run in float64 are kept for two inputs.
Takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from _reference import DATA, calibrate, manifest_of, nhwc, superanimal_config, synthetic

SEED = 0
CALIBRATION_FRAMES = range(0, 16)
GOLDEN_FRAMES = (40, 85)  # Committed goldens; --full uses FULL_FRAMES.
FULL_FRAMES = (20, 40, 55, 70, 85, 99)
RANDOM_SHAPES = ((256, 256), (160, 224))
SUBSAMPLE = 4
FLOAT64_INPUTS = ('crop40', 'random160x224')
BBOX_MARGIN = 25  # DeepLabCut's typed DataConfig default.
HEATMAP_STD = 0.25  # Target spread of calibrated heatmaps.


def build_models():
    import timm
    from deeplabcut.pose_estimation_pytorch.models import PoseModel

    cfg = superanimal_config()
    model = PoseModel.build(cfg['model'])
    model.eval()
    classifier = {f'backbone.model.{k}': v for k, v in
                  timm.create_model('hrnet_w32', pretrained=False).state_dict().items()
                  if k.split('.')[0] in synthetic.SEED_TIMM_HEAD}
    return cfg, model, classifier


def real_crops(frames, cfg):
    """uint8 crops by DeepLabCut's top_down_crop around labelled keypoints, and the normalised
    crops from DeepLabCut's inference transform."""
    import cv2
    import pandas as pd
    from deeplabcut.pose_estimation_pytorch.data.image import top_down_crop
    from deeplabcut.pose_estimation_pytorch.data.transforms import build_transforms
    from deeplabcut.pose_estimation_pytorch.data.utils import bbox_from_keypoints

    labels = pd.read_hdf(DATA / 'labeled-data' / 'm4s1' / 'CollectedData_Pranav.h5')
    transform = build_transforms(cfg['data']['inference'])
    crops, normalised = [], []
    for i in frames:
        image = cv2.cvtColor(cv2.imread(str(DATA / labels.index[i])), cv2.COLOR_BGR2RGB)
        xy = labels.iloc[i].to_numpy(np.float64).reshape(-1, 2)
        keypoints = np.concatenate([xy, np.where(np.isnan(xy[:, :1]), 0, 2)], axis=1)
        h, w = image.shape[:2]
        bbox = bbox_from_keypoints(keypoints, h, w, BBOX_MARGIN)
        crop, _, _ = top_down_crop(image, bbox, (256, 256))
        out = transform(image=crop, keypoints=[], class_labels=[], bboxes=[[0, 0, 256, 256]],
                        bbox_labels=['image'])['image']
        crops.append(crop)
        normalised.append(np.asarray(out, np.float32))
    return np.stack(crops), np.stack(normalised)


def run_with_taps(model, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    net = model.backbone.model
    taps = {}

    def keep(name):
        def hook(_, __, out):
            outs = out if isinstance(out, (list, tuple)) else [out]
            for b, t in enumerate(outs):
                taps[name if len(outs) == 1 and name in ('stem', 'layer1') else f'{name}/{b}'] = nhwc(t)
        return hook

    handles = [net.act2.register_forward_hook(keep('stem')),
               net.layer1.register_forward_hook(keep('layer1'))]
    handles += [getattr(net, f'stage{s}').register_forward_hook(keep(f'stage{s}')) for s in (2, 3, 4)]
    with torch.no_grad():
        outputs = model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous())
        poses = model.get_predictions(outputs)['bodypart']['poses']
    for h in handles:
        h.remove()
    # Our network computes only output 0 of the last module (see superanimal_jax/nn/hrnet.py).
    for b in (1, 2, 3):
        taps.pop(f'stage4/{b}')
    taps['heatmaps'] = nhwc(outputs['bodypart']['heatmap'])
    taps['keypoints'] = poses[:, 0].numpy().copy()
    return taps


def main() -> None:
    import deeplabcut
    import timm
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--full', action='store_true', help='keep full taps, more crops')
    parser.add_argument('--checkpoints', type=Path, help='also keep the written .pth/.pt here')
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)

    cfg, model, classifier = build_models()
    manifest = manifest_of(model.state_dict())
    extra_manifest = manifest_of(classifier)
    state = synthetic.synthetic_state_dict(manifest, seed=SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

    crops, normalised = real_crops(CALIBRATION_FRAMES, cfg)
    batch = torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()
    calibrate(model, batch)
    with torch.no_grad():
        heat = model(batch)['bodypart']['heatmap']
    bias = model.heads.bodypart.heatmap_head.deconv_layers[0].bias.view(1, -1, 1, 1)
    head_gain = float(HEATMAP_STD / (heat - bias).std())
    stats = {k: v.numpy().copy() for k, v in model.state_dict().items()
             if k.endswith(('running_mean', 'running_var'))}
    state = synthetic.synthetic_state_dict(manifest, seed=SEED, overrides=stats, head_gain=head_gain)
    extra = synthetic.synthetic_state_dict(extra_manifest, seed=SEED)

    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic.write_pose_checkpoints(state, args.checkpoints or tmp, seed_extra=extra)
        snapshot = torch.load(paths['dlc3'], map_location='cpu', weights_only=True)
        model.load_state_dict(snapshot['model'], strict=True)  # As DeepLabCut's runner loads it.
    model.eval()

    frames = FULL_FRAMES if args.full else GOLDEN_FRAMES
    golden_crops, golden_inputs = real_crops(frames, cfg)
    inputs = {f'crop{i}': golden_inputs[j:j + 1] for j, i in enumerate(frames)}
    inputs.update({f'random{h}x{w}': synthetic.random_crops((h, w), j, SEED)
                   for j, (h, w) in enumerate(RANDOM_SHAPES)})
    golden = {f'crops/{f"crop{i}"}': golden_crops[j] for j, i in enumerate(frames)}
    for name, x in inputs.items():
        taps = run_with_taps(model, x)
        for tap, value in taps.items():
            if tap not in ('heatmaps', 'keypoints'):
                golden[f'{name}/maxabs/{tap}'] = np.float32(np.abs(value).max())
                if not args.full:
                    value = value[:, ::SUBSAMPLE, ::SUBSAMPLE]
            golden[f'{name}/{tap}'] = value
    # The same network in float64: separates implementation differences from float32 rounding.
    model.double()
    golden64 = {}
    for name in FLOAT64_INPUTS:
        with torch.no_grad():
            out = model(torch.from_numpy(inputs[name]).double().permute(0, 3, 1, 2).contiguous())
        golden64[f'{name}/heatmaps'] = nhwc(out['bodypart']['heatmap'])
    model.float()
    suffix = '_full' if args.full else ''
    np.savez_compressed(args.out / f'pose_golden{suffix}.npz', **golden)
    np.savez_compressed(args.out / f'pose_golden_float64{suffix}.npz', **golden64)
    if args.full:
        return
    np.savez_compressed(args.out / 'pose_bn_stats.npz', **stats)
    info = {
        'made_by': 'tests/reference/make_pose_fixtures.py',
        'versions': {'deeplabcut': deeplabcut.__version__, 'timm': timm.__version__,
                     'torch': torch.__version__, 'numpy': np.__version__},
        'seed': SEED, 'head_gain': head_gain, 'subsample': SUBSAMPLE,
        'manifest': manifest, 'seed_extra_manifest': extra_manifest,
        'state_sha256': hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest(),
        'normalised_sha256': {f'crop{i}': hashlib.sha256(golden_inputs[j].tobytes()).hexdigest()
                              for j, i in enumerate(frames)},
        'random_inputs': {name: list(x.shape) for name, x in inputs.items() if 'random' in name},
    }
    (args.out / 'pose_manifest.json').write_text(json.dumps(info) + '\n')


if __name__ == '__main__':
    main()
