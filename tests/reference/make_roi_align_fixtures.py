"""Golden RoIAlign / MultiScaleRoIAlign / LevelMapper fixtures from torchvision (run inside .ref/).

    .ref/bin/python tests/reference/make_roi_align_fixtures.py --out tests/fixtures

Writes ``detector_roi_align.npz`` (about 200 KB, 5 s on 2 cores).  Feature maps are
not stored: they are ``np.random.default_rng(seed).standard_normal(shape, float32)``, NHWC, and
the test regenerates them and checks their sha256.  torchvision is run on CPU, float32.

* ``align/<case>/*``: ``torchvision.ops.roi_align(aligned=False)`` on one map, for spatial scales
  1/4 .. 1/32 and 0.3 (7x7, sampling ratio 2) plus one 5x3 / sampling-ratio-3 case.  RoIs (image
  pixels) mix random boxes with the kernel's corner cases: boxes narrower than one feature pixel,
  zero and negative sizes, boxes touching or crossing the right/bottom border (the ``>= H - 1``
  branch and the ``-1 .. H`` range test), boxes partly or wholly outside the top/left.
* ``multiscale/*``: ``MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2)`` on a fake pyramid for a
  256x320 image (64x80 .. 8x10, 16 channels), 50 RoIs spanning every level, including areas at
  and one ulp below each level threshold; torchvision's inferred scales and level range.
* ``level/*``: ``LevelMapper(2, 5)`` on every float32 area within ``WINDOW`` ulps of each
  threshold (boxes ``(0, 0, area, 1)``), and on boxes whose sqrt(area) is exactly 112/224/448.
* ``scales/<name>/*``: torchvision's ``_setup_scales`` on the detector's real pyramid shapes.
* ``grad/*``: the backward pass (what Faster R-CNN training uses): for each ``align`` case and for
  the ``multiscale`` pyramid, the feature gradient of ``sum(pooled * cotangent)`` with a random
  ``cotangent`` (stored), in float32 and, from the same values in float64, float64.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

import _reference  # noqa: F401  (puts the repository on sys.path)

WINDOW = 128
ALIGN_CASES = {  # name: (seed, map shape (H, W, C), spatial scale, output size, sampling ratio)
    's4': (11, (64, 80, 2), 1 / 4, (7, 7), 2),
    's8': (12, (32, 40, 2), 1 / 8, (7, 7), 2),
    's16': (13, (16, 20, 2), 1 / 16, (7, 7), 2),
    's32': (14, (8, 10, 2), 1 / 32, (7, 7), 2),
    's0.3': (15, (77, 96, 2), 0.3, (7, 7), 2),
    'p5x3_n3': (16, (24, 30, 2), 1 / 8, (5, 3), 3),
}
IMAGE = (256, 320)
PYRAMID_SEED = 21
PYRAMID = ((64, 80, 16), (32, 40, 16), (16, 20, 16), (8, 10, 16))
REAL_PYRAMIDS = {  # name: (resized image (h, w), FPN level shapes of its padded tensor)
    '800x1066': ((800, 1066), ((200, 272), (100, 136), (50, 68), (25, 34))),
    '749x1333': ((749, 1333), ((192, 336), (96, 168), (48, 84), (24, 42))),
    '800x800': ((800, 800), ((200, 200), (100, 100), (50, 50), (25, 25))),
}


def features(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def digest(*arrays) -> str:
    return hashlib.sha256(b''.join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def align_rois(rng, shape, scale) -> np.ndarray:
    """RoIs in image pixels for one map: corner cases in feature pixels (divided by the scale),
    then random boxes."""
    h, w = shape[0], shape[1]
    f = []  # (x1, y1, x2, y2) in feature pixels
    for k in (0.1, 0.5, 0.9):  # narrower than one feature pixel, inside and at the far border
        f += [(3.2, 2.7, 3.2 + k, 2.7 + k), (w - k, h - k, w, h), (w - 0.05, 1.0, w + 0.05, 1.0 + k)]
    f += [(2.0, 3.0, 2.0, 3.0), (5.5, 4.5, 4.5, 3.5)]  # zero and negative size
    f += [(0, 0, w, h), (w / 2, h / 2, w, h), (1.3, h - 3.7, w - 0.2, h)]  # touching the border
    for k in (0.25, 1.0, 1.5, 3.0, 9.0):  # crossing the right/bottom border by k pixels
        f += [(w - 4, h - 4, w + k, h + k)]
    for k in (0.3, 1.0, 1.4, 6.0):  # crossing the top/left border
        f += [(-k, -k, 4 - k, 5 - k), (-k, 2.0, w + k, h / 2)]
    f += [(w + 0.5, 1, w + 4, 4), (-6, -7, -1.5, -1.2), (w + 1.2, h + 1.2, w + 3, h + 3)]  # outside
    f += [(w - 1, h - 1, w - 1 + 1e-3, h - 1 + 1e-3), (w - 1.0, 0.0, w, h)]  # the last row/column
    # 28-pixel boxes (bins of 4) whose first sample lands exactly on -1 and last exactly on W / H.
    f += [(-2, -2, 26, 26), (w - 27, h - 27, w + 1, h + 1), (-2, h - 27, 26, h + 1)]
    rois = np.float32(f) / np.float32(scale)
    x1 = rng.uniform(-0.1 * w, w, 24)
    y1 = rng.uniform(-0.1 * h, h, 24)
    bw = np.exp(rng.uniform(np.log(0.3), np.log(1.2 * w), 24))
    bh = np.exp(rng.uniform(np.log(0.3), np.log(1.2 * h), 24))
    random = np.stack([x1, y1, x1 + bw, y1 + bh], 1) / scale
    return np.concatenate([rois, random]).astype(np.float32)


def box_with_area(area: np.float32, width: float, x1: float, y1: float) -> list:
    """A box (x1, y1, x2, y2) whose float32 area (x2 - x1) * (y2 - y1) is exactly ``area``."""
    x1, y1 = np.float32(x1), np.float32(y1)
    for step in range(64):  # Not every area is a product with a given width: nudge the width.
        x2 = x1 + np.float32(width + step / 8)
        bw = x2 - x1
        guess = np.float32(area / bw)
        for delta in range(-64, 65):
            y2 = y1 + (guess.view(np.int32) + delta).view(np.float32)
            if (y2 - y1) * bw == area:
                return [x1, y1, x2, y2]
    raise ValueError(f'no float32 box of width {width} with area {area}')


def level_boxes(rng, thresholds) -> np.ndarray:
    boxes = []
    for side in (112, 224, 448):  # sqrt(area) exactly at a level boundary
        boxes += [[0, 0, side, side], [10.5, 3.25, 10.5 + side, 3.25 + side],
                  [0, 0, side / 2, side * 2], [7, 9, 7 + side * 4, 9 + side / 4]]
    for t in thresholds:  # the threshold areas themselves and their neighbours, as real boxes
        for d in (-2, -1, 0, 1):
            area = (np.float32(t).view(np.int32) + d).view(np.float32)
            for width in (100.0, 333.0):
                boxes.append(box_with_area(area, width, rng.uniform(0, 50), rng.uniform(0, 50)))
    boxes += [[5, 5, 5, 9], [3, 3, 3, 3]]  # zero area: level 0
    x1y1 = rng.uniform(0, 300, (200, 2))
    wh = np.exp(rng.uniform(np.log(1), np.log(900), (200, 2)))
    return np.concatenate([np.float32(boxes), np.concatenate([x1y1, x1y1 + wh], 1)]).astype(np.float32)


def multiscale_rois(rng, thresholds) -> np.ndarray:
    boxes = [[0, 0, 112, 112], [40, 20, 264, 244], [0, 0, 320, 256], [300, 240, 330, 270],
             [318.5, 254.5, 320, 256], [-20, -10, 60, 50], [150.2, 100.7, 150.5, 101.1]]
    for t in thresholds:  # each level boundary from both sides, as boxes over the image
        for d in (-1, 0):
            area = (np.float32(t).view(np.int32) + d).view(np.float32)
            boxes.append(box_with_area(area, 300.0, rng.uniform(-10, 20), rng.uniform(-10, 20)))
    n = 50 - len(boxes)
    x1y1 = rng.uniform(-10, 300, (n, 2)) * [1, 0.8]
    wh = np.exp(rng.uniform(np.log(2), np.log(420), (n, 2)))
    return np.concatenate([np.float32(boxes), np.concatenate([x1y1, x1y1 + wh], 1)]).astype(np.float32)


def nchw(nhwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(nhwc)).permute(2, 0, 1)[None].contiguous()


def ieee_thresholds(k_min: int = 2, k_max: int = 5) -> list[np.float32]:
    """For k = 3 .. 5, the smallest float32 area whose LevelMapper level (every step correctly
    rounded float32) is >= k, by bisection over float32 bit patterns: where the windows centre.
    (The reference environment has no JAX, so this is not imported from the package.)"""
    def level(area: np.float32) -> float:
        log2 = np.float32(np.log2(np.float64(np.sqrt(area) / np.float32(224))))
        return float(np.floor((np.float32(4) + log2) + np.float32(1e-6)))

    found = []
    for k in range(k_min + 1, k_max + 1):
        lo, hi = 0, int(np.float32(np.inf).view(np.int32))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if level(np.int32(mid).view(np.float32)) >= k else (mid, hi)
        found.append(np.int32(hi).view(np.float32))
    return found


def nchw_batch(nhwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(nhwc)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    import torch
    import torchvision
    from torchvision.ops import MultiScaleRoIAlign, roi_align
    from torchvision.ops.poolers import LevelMapper, _setup_scales

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    grad_rng = np.random.default_rng(1)  # Apart from ``rng``: the forward cases stay as they were.
    out = {}

    for name, (seed, shape, scale, size, ratio) in ALIGN_CASES.items():
        feat = features(seed, shape)
        rois = align_rois(rng, shape, scale)
        boxes = torch.from_numpy(np.concatenate([np.zeros((len(rois), 1), np.float32), rois], 1))
        pooled = roi_align(nchw(feat), boxes, size, scale, ratio, aligned=False)
        case = {'seed': np.int64(seed), 'shape': np.int64(shape), 'sha256': np.str_(digest(feat)),
                'scale': np.float64(scale), 'output_size': np.int64(size), 'sampling_ratio': np.int64(ratio),
                'rois': rois, 'out': pooled.permute(0, 2, 3, 1).numpy().copy()}
        out.update({f'align/{name}/{k}': v for k, v in case.items()})
        cotangent = grad_rng.standard_normal(case['out'].shape, dtype=np.float32)
        for dtype in (torch.float32, torch.float64):
            x = nchw(feat).to(dtype).requires_grad_()
            pooled = roi_align(x, boxes.to(dtype), size, scale, ratio, aligned=False)
            pooled.backward(nchw_batch(cotangent).to(dtype))
            out[f'grad/{name}/{str(dtype)[6:]}'] = x.grad[0].permute(1, 2, 0).numpy().copy()
        out[f'grad/{name}/cotangent'] = cotangent

    # LevelMapper at every float32 area around each threshold, found here from torchvision itself.
    mapper = LevelMapper(2, 5)
    levels_of = lambda b: mapper([torch.from_numpy(np.float32(b))]).numpy()  # noqa: E731
    ieee = np.float32(ieee_thresholds())
    areas, levels = [], []
    for t in ieee:
        bits = t.view(np.int32) + np.arange(-WINDOW, WINDOW + 1, dtype=np.int32)
        a = bits.view(np.float32)
        lv = levels_of(np.stack([0 * a, 0 * a, a, 0 * a + 1], 1))
        assert (np.diff(lv) >= 0).all() and np.count_nonzero(np.diff(lv)) == 1, 'LevelMapper not a step here'
        one_by_one = np.concatenate([levels_of([[0, 0, v, 1]]) for v in a])
        assert np.array_equal(lv, one_by_one), 'LevelMapper differs between vector and scalar paths'
        areas.append(a)
        levels.append(lv)
    thresholds = np.float32([a[np.argmax(lv > lv[0])] for a, lv in zip(areas, levels)])
    boxes = level_boxes(rng, thresholds)
    out.update({'level/window_areas': np.stack(areas), 'level/window_levels': np.int8(levels),
                'level/thresholds': thresholds, 'level/boxes': boxes,
                'level/boxes_levels': np.int8(levels_of(boxes))})

    pyramid = [features(PYRAMID_SEED + k, s) for k, s in enumerate(PYRAMID)]
    rois = multiscale_rois(rng, thresholds)
    pooler = MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2)
    x = {str(k): nchw(f) for k, f in enumerate(pyramid)}
    x['pool'] = torch.zeros(1, 16, 4, 5)  # Present in the detector's dict; not pooled.
    pooled = pooler(x, [torch.from_numpy(rois)], [IMAGE])
    cotangent = grad_rng.standard_normal(tuple(pooled.permute(0, 2, 3, 1).shape), dtype=np.float32)
    out['grad/multiscale/cotangent'] = cotangent
    for dtype in (torch.float32, torch.float64):
        levels = {str(k): nchw(f).to(dtype).requires_grad_() for k, f in enumerate(pyramid)}
        again = pooler({**levels, 'pool': x['pool'].to(dtype)}, [torch.from_numpy(rois).to(dtype)], [IMAGE])
        again.backward(nchw_batch(cotangent).to(dtype))
        for k, level in levels.items():
            out[f'grad/multiscale/{str(dtype)[6:]}/{k}'] = level.grad[0].permute(1, 2, 0).numpy().copy()
    out.update({'multiscale/seed': np.int64(PYRAMID_SEED), 'multiscale/shapes': np.int64(PYRAMID),
                'multiscale/sha256': np.str_(digest(*pyramid)), 'multiscale/image': np.int64(IMAGE),
                'multiscale/rois': rois,
                'multiscale/levels': np.int8(pooler.map_levels([torch.from_numpy(rois)]).numpy()),
                'multiscale/scales': np.float64(pooler.scales),
                'multiscale/k_range': np.int64([pooler.map_levels.k_min, pooler.map_levels.k_max]),
                'multiscale/out': pooled.permute(0, 2, 3, 1).numpy().copy()})

    for name, (image, shapes) in REAL_PYRAMIDS.items():
        fake = [torch.zeros(1, 1, h, w) for h, w in shapes]
        scales, mapper = _setup_scales(fake, [image], 224, 4)
        out.update({f'scales/{name}/image': np.int64(image), f'scales/{name}/shapes': np.int64(shapes),
                    f'scales/{name}/scales': np.float64(scales),
                    f'scales/{name}/k_range': np.int64([mapper.k_min, mapper.k_max])})

    out['versions'] = np.str_(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__,
                                          'numpy': np.__version__}))
    np.savez_compressed(f'{args.out}/detector_roi_align.npz', **out)
    print('level thresholds (torchvision):', thresholds.tolist(), 'IEEE:', ieee.tolist())


if __name__ == '__main__':
    main()
