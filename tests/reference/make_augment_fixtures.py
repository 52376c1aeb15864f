"""Golden training augmentation from albumentations 1.4.3 as DeepLabCut 3.0.2 builds it (run inside .ref/).

    .ref/bin/python tests/reference/make_augment_fixtures.py --out tests/fixtures

The transform is DeepLabCut's own: ``build_transforms`` of the SuperAnimal ``hrnet_w32`` config's
``data.train`` (Affine rotation, GaussNoise, PadIfNeeded, Normalize) and of ``data.inference``
(augmentation off: padding and Normalize), called through DeepLabCut's ``apply_transform``.  Its
random decisions are forced on copies of the built transforms: the Affine gets ``p=1`` and
``rotate=(a, a)`` (or ``p=0``), GaussNoise ``p=1`` with the noise array handed in (or ``p=0``),
PadIfNeeded a fixed placement.  The noise is ``numpy.random.default_rng(seed).normal(0, std,
shape)``, which the tests regenerate (its sha256 is stored to prove it).

On three openfield frames, a 470x630 crop of one (so padding is not a no-op) and a 47x95 crop,
with their labelled keypoints plus edge, outside and unlabelled (NaN) points and several boxes
(DeepLabCut's box from the keypoints, boxes that rotate partly or wholly out of the frame), it
records ``augment_golden.npz``:

* each op alone, as a one-transform Compose with DeepLabCut's keypoint and box parameters:
  rotation at several angles (the 3x3 matrix too), noise at several strengths, padding at
  several placements;
* the whole DeepLabCut chain (augmentation on, with forced parameters, and off): float32 output
  images, keypoints with DeepLabCut's visibility update, boxes (zeros where dropped).

Images are kept as sha256 plus every 8th row and column; a few in full; the input frames in
full.  ``index`` (JSON) lists the cases, ``versions`` (JSON) the tools.  Takes about 15 seconds.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json

import cv2
import numpy as np

from _reference import DATA, superanimal_config

FRAMES = ('img0000', 'img0045', 'img0085')
CROPS = {'crop': ('img0045', (5, 475, 4, 634)), 'tiny': ('img0085', (200, 247, 300, 395))}  # y0, y1, x0, x1
ANGLES = (-30.0, -12.5, 0.0, 1e-9, 7.25, 30.0, 90.0)
NOISE = ((0.0, 1), (3.3, 2), (12.75, 3), (60.0, 4))  # (std, seed); 60 saturates both ends.
PADS = {'crop': ((0, 0), (10, 10), (3, 7), (10, 0)), 'tiny': ((0, 0), (17, 1), (9, 0)), 'img0000': ((0, 0),)}
CHAIN = (  # image, angle (None: not applied), (std, seed) (None: not applied), pad (top, left)
    ('img0000', 30.0, (12.75, 11), (0, 0)),
    ('crop', -30.0, (7.5, 12), (4, 9)),
    ('crop', 17.3, None, (10, 0)),
    ('img0085', None, (2.0, 13), (0, 0)),
    ('crop', None, None, (0, 10)),
    ('tiny', -21.0, (12.75, 14), (11, 1)),
)
OFF = (('crop', (6, 3)), ('img0045', (0, 0)))
FULL = {('rotate', 'img0000', 30.0), ('rotate', 'crop', -30.0), ('rotate', 'tiny', 90.0),
        ('pad', 'tiny', (17, 1))}
STEP = 8  # Thumbnails: every 8th row and column.
BBOX_MARGIN = 25  # DeepLabCut 3.0.2's typed DataConfig default.


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def inputs() -> dict:
    import pandas as pd
    from deeplabcut.pose_estimation_pytorch.data.utils import bbox_from_keypoints

    folder = DATA / 'labeled-data' / 'm4s1'
    labels = pd.read_hdf(folder / 'CollectedData_Pranav.h5')
    images = {}
    for name in FRAMES:
        frame = cv2.cvtColor(cv2.imread(str(folder / f'{name}.png')), cv2.COLOR_BGR2RGB)
        xy = labels.loc[f'labeled-data/m4s1/{name}.png'].to_numpy(np.float64).reshape(-1, 2)
        images[name] = (frame, xy)
    for name, (source, (y0, y1, x0, x1)) in CROPS.items():
        frame, xy = images[source]
        images[name] = (frame[y0:y1, x0:x1].copy(), xy - [x0, y0])
    out = {}
    for name, (image, labelled) in images.items():
        h, w = image.shape[:2]
        extra = [[np.nan, np.nan], [0, 0], [w, h], [w - 0.5, 1.25], [w / 2 - 0.5, h / 2 - 0.5], [-3, 50],
                 [w + 0.25, h / 3], [17.75, h - 2]]
        xy = np.concatenate([labelled, extra])
        v = np.where(np.isnan(xy).any(axis=1), 0.0, 2.0)
        kp = np.concatenate([xy, v[:, None]], axis=1)
        dlc = bbox_from_keypoints(kp[(kp[:, 0] > 0) & (kp[:, 0] < w) & (kp[:, 1] > 0) & (kp[:, 1] < h)],
                                  h, w, BBOX_MARGIN)
        boxes = np.array([dlc, [0, 0, 40, 30], [w - 12, h - 10, 12, 10], [0, 0, w, h],
                          [w / 3, h / 4, w / 5 + 0.3, h / 6 + 0.7], [2.5, h - 7.25, 5.5, 7.25]], np.float64)
        out[name] = (image, kp, boxes)
    return out


def forced(compose, angle=None, noise=None, pad=None):
    """A copy of DeepLabCut's Compose with every random decision fixed."""
    import albumentations as A

    compose = copy.deepcopy(compose)
    for t in compose.transforms:
        if isinstance(t, A.Affine):
            t.p = 0.0 if angle is None else 1.0
            t.rotate = (0.0, 0.0) if angle is None else (angle, angle)
        elif isinstance(t, A.GaussNoise):
            t.p = 0.0 if noise is None else 1.0
            t.get_params_dependent_on_targets = lambda params: {'gauss': noise}
        elif isinstance(t, A.PadIfNeeded):
            def update_params(params, _t=t, **kwargs):
                params = A.PadIfNeeded.update_params(_t, params, **kwargs)
                rows = params['pad_top'] + params['pad_bottom']
                cols = params['pad_left'] + params['pad_right']
                assert 0 <= pad[0] <= rows and 0 <= pad[1] <= cols, (pad, rows, cols)
                params.update(pad_top=pad[0], pad_bottom=rows - pad[0],
                              pad_left=pad[1], pad_right=cols - pad[1])
                return params
            t.update_params = update_params
    return compose


def single(compose, kind):
    """A one-transform Compose of DeepLabCut's ``kind`` transform with its keypoint/box parameters."""
    import albumentations as A

    t = next(t for t in compose.transforms if isinstance(t, kind))
    return A.Compose([t], keypoint_params=compose.processors['keypoints'].params,
                     bbox_params=compose.processors['bboxes'].params)


def dlc_keypoints(kp: np.ndarray) -> np.ndarray:
    """DeepLabCut carries unlabelled keypoints as (0, 0, v=0) (``DLCLoader._remove_nans``)."""
    kp = kp.copy()
    kp[np.isnan(kp[:, :2]).any(axis=1)] = 0
    return kp


def run(transform, image, kp, boxes) -> dict:
    from deeplabcut.pose_estimation_pytorch.data.utils import apply_transform

    labels = [f'individual0_kp{i}' for i in range(len(kp))]
    res = apply_transform(transform, image, dlc_keypoints(kp), boxes.copy(), class_labels=labels)
    return {'image': res['image'], 'keypoints': np.asarray(res['keypoints'], np.float64),
            'bboxes': np.asarray(res['bboxes'], np.float64)}


def record(out: dict, key: str, image: np.ndarray, full: bool = False) -> None:
    out[f'{key}/sha256'] = np.str_(sha(image))
    out[f'{key}/thumb'] = image[::STEP, ::STEP]
    out[f'{key}/shape'] = np.array(image.shape)
    if full:
        out[f'{key}/full'] = image


def main() -> None:
    import albumentations as A
    import deeplabcut
    import skimage
    from deeplabcut.pose_estimation_pytorch.data.transforms import build_transforms

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    data_cfg = superanimal_config()['data']
    train, off = build_transforms(data_cfg['train']), build_transforms(data_cfg['inference'])
    assert [type(t) for t in train.transforms] == [A.Affine, A.GaussNoise, A.PadIfNeeded, A.Normalize], train
    assert [type(t) for t in off.transforms] == [A.PadIfNeeded, A.Normalize], off
    images = inputs()
    out, index = {}, {'rotate': [], 'noise': [], 'pad': [], 'chain': [], 'off': []}
    for name in FRAMES:
        out[f'frames/{name}'] = images[name][0]
    for name, (source, window) in CROPS.items():
        out[f'crops/{name}/source'], out[f'crops/{name}/window'] = np.str_(source), np.array(window)
    for name, (_, kp, boxes) in images.items():
        out[f'inputs/{name}/keypoints'], out[f'inputs/{name}/bboxes'] = kp, boxes

    for name, (image, kp, boxes) in images.items():
        for i, angle in enumerate(ANGLES):
            key = f'rotate/{name}/{i}'
            compose = forced(single(train, A.Affine), angle=angle)
            affine = compose.transforms[0]
            out[f'{key}/matrix'] = affine.get_params_dependent_on_targets({'image': image})['matrix'].params
            res = run(compose, image, kp, boxes)
            record(out, key, res['image'], ('rotate', name, angle) in FULL)
            out[f'{key}/keypoints'], out[f'{key}/bboxes'] = res['keypoints'], res['bboxes']
            index['rotate'].append({'key': key, 'image': name, 'angle': angle})
    image, kp, boxes = images['img0045']
    for i, (std, seed) in enumerate(NOISE):
        key = f'noise/img0045/{i}'
        noise = np.random.default_rng(seed).normal(0.0, std, image.shape)
        res = run(forced(single(train, A.GaussNoise), noise=noise), image, kp, boxes)
        record(out, key, res['image'])
        out[f'{key}/noise_sha256'] = np.str_(sha(noise))
        index['noise'].append({'key': key, 'image': 'img0045', 'std': std, 'seed': seed})
    for name, positions in PADS.items():
        image, kp, boxes = images[name]
        for i, pad in enumerate(positions):
            key = f'pad/{name}/{i}'
            res = run(forced(single(train, A.PadIfNeeded), pad=pad), image, kp, boxes)
            record(out, key, res['image'], ('pad', name, pad) in FULL)
            out[f'{key}/keypoints'], out[f'{key}/bboxes'] = res['keypoints'], res['bboxes']
            index['pad'].append({'key': key, 'image': name, 'position': pad})
    for i, (name, angle, noise, pad) in enumerate(CHAIN):
        image, kp, boxes = images[name]
        key = f'chain/{i}'
        gauss = None if noise is None else np.random.default_rng(noise[1]).normal(0.0, noise[0], image.shape)
        res = run(forced(train, angle=angle, noise=gauss, pad=pad), image, kp, boxes)
        assert res['image'].dtype == np.float32
        record(out, key, res['image'])
        out[f'{key}/keypoints'], out[f'{key}/bboxes'] = res['keypoints'], res['bboxes']
        index['chain'].append({'key': key, 'image': name, 'angle': angle, 'noise': noise, 'position': pad})
    for i, (name, pad) in enumerate(OFF):
        image, kp, boxes = images[name]
        key = f'off/{i}'
        res = run(forced(off, pad=pad), image, kp, boxes)
        record(out, key, res['image'])
        out[f'{key}/keypoints'], out[f'{key}/bboxes'] = res['keypoints'], res['bboxes']
        index['off'].append({'key': key, 'image': name, 'position': pad})
    out['index'] = np.str_(json.dumps(index))
    out['versions'] = np.str_(json.dumps({
        'deeplabcut': deeplabcut.__version__, 'albumentations': A.__version__, 'opencv': cv2.__version__,
        'numpy': np.__version__, 'scikit-image': skimage.__version__}))
    np.savez_compressed(f'{args.out}/augment_golden.npz', **out)


if __name__ == '__main__':
    main()
