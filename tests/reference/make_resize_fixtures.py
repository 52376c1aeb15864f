"""Golden detector-preprocessing fixtures from DeepLabCut 3.0.2 + torchvision (reference env).

    .ref/bin/python tests/reference/make_resize_fixtures.py --out tests/fixtures

Writes ``detector_resize.npz`` (~90 KB).  Everything is produced by the real code path: the
SuperAnimal-TopViewMouse detector config, DeepLabCut's ``build_transforms`` +
``build_bottom_up_preprocessor`` (albumentations Normalize, ToTensor, ToBatch), the runner's
``torch.stack`` and the ``GeneralizedRCNNTransform`` of the detector ``DETECTORS.build`` makes:
1. ``sizes/*``: resized and padded batch sizes for many frame sizes (zero frames).
2. ``table``: the whole normalisation chain on a frame holding every uint8 value per channel.
3. ``pre/<name>/*``: ``transform`` outputs (NHWC) for synthetic uint8 noise frames: 48x64 with
   small ``min_size``/``max_size`` (once through torch's generic kernel, once through the
   small-output channels-last kernel) and 480x640 at the defaults: a sha256 of the whole float32
   tensor, every n-th row/column (all of the channels-last case), max-abs, per-channel sums.
4. ``boxes/*``: ``transform.postprocess`` on random xyxy boxes (some outside the image).
Runs with 2 torch threads (DeepLabCut's multi-threaded CPU case) and records the versions: the
reference env's torch 2.15 rounds the generic bilinear kernel's source index without an FMA,
torch 2.13 (DeepLabCut's lockfile, the test env) with one; the tests pick the arithmetic from the
recorded version.  Takes ~10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

SEED = 0
FRAME_SIZES = (
    (480, 640), (600, 800), (720, 1280), (1080, 1920), (2160, 3840), (1024, 1024), (768, 1024),
    (960, 1280), (576, 720), (486, 720),
    # odd ones: portrait, extreme aspect ratios, tiny, odd sides, sizes that are already resized.
    (640, 480), (481, 641), (333, 999), (1000, 333), (2000, 100), (100, 2000), (1, 1), (7, 5),
    (123, 457), (799, 1333), (800, 1066), (1001, 1335), (1200, 1600), (240, 320), (50, 1333),
)
# name: (frame (H, W), min_size, max_size, keep every n-th row/column)
PREPROCESS = {
    'small': ((48, 64), 100, 150, 4),          # -> 100x133, padded 128x160: generic kernel.
    'small_cl': ((48, 64), 40, 60, 1),         # -> 40x53 (h + w <= 128): channels-last kernel.
    'vga': ((480, 640), 800, 1333, 16),        # -> 800x1066, padded 800x1088.
}
BOX_FRAMES = ((480, 640), (720, 1280), (1024, 1024), (486, 720), (123, 457))  # must be in FRAME_SIZES


def synthetic_frame(height: int, width: int, seed: int = SEED) -> np.ndarray:
    """Uniform uint8 noise ``(H, W, 3)``; the test regenerates it and checks its sha256."""
    rng = np.random.default_rng([seed, height, width])
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def build():
    import torch
    from deeplabcut.pose_estimation_pytorch.config.pose import PoseConfig
    from deeplabcut.pose_estimation_pytorch.data.preprocessor import build_bottom_up_preprocessor
    from deeplabcut.pose_estimation_pytorch.data.transforms import build_transforms
    from deeplabcut.pose_estimation_pytorch.models import DETECTORS

    cfg = PoseConfig.build_for_superanimal_inference(
        super_animal='superanimal_topviewmouse', model_name='hrnet_w32',
        detector_name='fasterrcnn_resnet50_fpn_v2', max_individuals=3, device='cpu').model_dump()
    det = cfg['detector']
    preprocessor = build_bottom_up_preprocessor(det['data']['colormode'],
                                                build_transforms(det['data']['inference']))
    detector = DETECTORS.build({**det['model'], 'pretrained': False})
    detector.eval()
    transform = detector.model.transform

    def dlc_inputs(frame: np.ndarray):
        """What the detector runner feeds the model: preprocessor, then torch.stack per batch."""
        inputs, _ = preprocessor(frame, {})
        return torch.stack([inputs[0]], dim=0)

    return transform, dlc_inputs, det


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()

    import albumentations
    import deeplabcut
    import torch
    import torchvision

    torch.set_num_threads(2)
    transform, dlc_inputs, det = build()
    assert (transform.min_size, transform.max_size) == ((800,), 1333), transform
    out: dict[str, np.ndarray] = {}

    with torch.inference_mode():
        sizes, resized, padded = [], [], []
        for h, w in FRAME_SIZES:
            images, _ = transform(torch.zeros(1, 3, h, w))
            sizes.append((h, w))
            resized.append(tuple(images.image_sizes[0]))
            padded.append(tuple(images.tensors.shape[-2:]))
        out['sizes/frame'] = np.int32(sizes)
        out['sizes/resized'] = np.int32(resized)
        out['sizes/padded'] = np.int32(padded)

        # Every uint8 value once per channel; channel c holds (k + 85 c) % 256.
        k = np.arange(256)
        frame = np.stack([(k + 85 * c) % 256 for c in range(3)], -1).astype(np.uint8).reshape(16, 16, 3)
        normalized = transform.normalize(dlc_inputs(frame)[0]).numpy()  # (3, 16, 16)
        table = np.zeros((256, 3), np.float32)
        for c in range(3):
            table[frame[..., c].ravel(), c] = normalized[c].ravel()
        out['table'] = table

        saved_sizes = transform.min_size, transform.max_size
        for name, ((h, w), min_size, max_size, step) in PREPROCESS.items():
            transform.min_size, transform.max_size = (min_size,), max_size
            frame = synthetic_frame(h, w)
            images, _ = transform(dlc_inputs(frame))
            x = images.tensors.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC like ours
            prefix = f'pre/{name}/'
            out[prefix + 'frame_sha256'] = np.array(sha256(frame))
            out[prefix + 'sizes'] = np.int32([min_size, max_size])
            out[prefix + 'image_size'] = np.int32(images.image_sizes[0])
            out[prefix + 'shape'] = np.int32(x.shape)
            out[prefix + 'sha256'] = np.array(sha256(x))
            out[prefix + 'max_abs'] = np.float32(np.abs(x).max())
            out[prefix + 'channel_sums'] = x.astype(np.float64).sum((0, 1, 2))
            out[prefix + 'subsample'] = x[:, ::step, ::step]
        transform.min_size, transform.max_size = saved_sizes

        rng = np.random.default_rng([SEED, 4])
        for i, original in enumerate(BOX_FRAMES):
            size = resized[sizes.index(original)]
            boxes = rng.uniform(-0.1, 1.1, (16, 4)) * np.float32([size[1], size[0], size[1], size[0]])
            boxes = np.sort(boxes.reshape(16, 2, 2), axis=1).reshape(16, 4).astype(np.float32)
            result = transform.postprocess([{'boxes': torch.from_numpy(boxes)}], [size], [original])
            out[f'boxes/{i}/original'] = np.int32(original)
            out[f'boxes/{i}/resized'] = np.int32(size)
            out[f'boxes/{i}/input'] = boxes
            out[f'boxes/{i}/output'] = result[0]['boxes'].numpy()

    out['meta'] = np.array(json.dumps({
        'versions': {'deeplabcut': deeplabcut.__version__, 'torch': torch.__version__,
                     'torchvision': torchvision.__version__,
                     'albumentations': albumentations.__version__, 'numpy': np.__version__},
        'torch_num_threads': torch.get_num_threads(),
        'detector_data_inference': det['data']['inference'],
        'seed': SEED, 'subsample': {k: v[3] for k, v in PREPROCESS.items()},
    }))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'detector_resize.npz'
    np.savez_compressed(path, **out)
    print(f'wrote {path} ({path.stat().st_size / 1024:.0f} KB)')


if __name__ == '__main__':
    main()
