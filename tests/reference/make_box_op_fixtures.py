"""Golden box-op fixtures from torchvision (run inside the reference env, CPU, a few seconds).

    .ref/bin/python tests/reference/make_box_op_fixtures.py --out tests/fixtures

Writes ``detector_box_ops.npz`` (< 500 KB), consumed by ``tests/test_boxes.py``,
``tests/test_nms.py`` and ``tests/test_anchors.py``.  Every expected value is torchvision's own
output on CPU (``BoxCoder.decode``, ``clip_boxes_to_image``, ``remove_small_boxes``,
``box_area``, ``box_iou``, ``nms``, ``batched_nms`` and both of its internal paths,
``AnchorGenerator``); the inputs are random or constructed to sit on the edges:

* ``decode/*``: RPN weights (1, 1, 1, 1) and box-head weights (10, 10, 5, 5); dw/dh on, just
  above and below the float32 clip value, far above it, and far below zero (exp underflows);
  torch's ``exp`` of the clamped dw/dh is kept to tell which rows must match bit for bit.
* ``clip/*``, ``small/*``: boxes outside the image and widths at float32(1e-3), float32(1e-2)
  (below the double 0.01) and their float32 neighbours.
* ``nms/<case>/*``: random boxes; exact duplicates with tied scores; boxes touching edge to edge,
  IoU exactly 0.5, and IoU exactly float32(0.1) (> the double 0.1) with threshold 0.1.
* ``batched/rpn``: 4663 level-grouped RPN-like proposals, 15 % with probability exactly 1.0
  (ties): ``batched_nms`` (CPU: per-group path, 18 652 elements > 4000) and the coordinate trick
  (the CUDA path) on the same input.
* ``batched/head``: 1000 box-head candidates, one class: ``batched_nms`` takes the coordinate
  trick (4000 elements is not > 4000); plain ``nms`` of the unshifted boxes for contrast.
* ``batched/flip``: 1001 boxes in 4 groups with pairs whose IoU decision at 0.5 flips under the
  coordinate offset: ``batched_nms`` on all 1001 (per-group path) and on the first 1000
  (offset path).
* ``anchors/*``: ``AnchorGenerator`` for padded 800x1088 and 768x1344 inputs (sha256 of the full
  array, every level's first and last rows, the whole 'pool' level, 256 random rows) and
  ``generate_anchors`` for the five FPN sizes and for odd sizes/ratios (round-half-even).
"""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

SEED = 0
CLIP = math.log(1000.0 / 16)
PADDED = {'800x1088': (800, 1088), '768x1344': (768, 1344)}
# FPN level sizes of those inputs (spec §2.3, §2.10: /4, /8, /16, /32 and ceil(/64)).
FEATURE_SIZES = {
    '800x1088': [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)],
    '768x1344': [(192, 336), (96, 168), (48, 84), (24, 42), (12, 21)],
}
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = (0.5, 1.0, 2.0)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def f32(x):
    return np.asarray(x, np.float32)


def random_boxes(rng, n, lo=0.0, hi=1000.0, wmin=2.0, wmax=200.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(wmin, wmax, (n, 2))
    return f32(np.concatenate([xy, xy + wh], 1))


def all_anchors(name):
    height, width = PADDED[name]
    gen = AnchorGenerator(FPN_SIZES, (RATIOS,) * len(FPN_SIZES))
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    feats = [torch.zeros(1, 1, h, w) for h, w in FEATURE_SIZES[name]]
    return gen(images, feats)[0].numpy()


def decode_cases(rng, out):
    anchors = all_anchors('800x1088')
    n = 1000
    ref = anchors[rng.choice(len(anchors), n, replace=False)]
    deltas = f32(rng.normal(0, 1, (n, 4)))
    c = np.float32(CLIP)
    edge = f32([c, np.nextafter(c, np.float32(9)), np.nextafter(c, np.float32(0)), 4.5, 7.0,
                12.0, 88.0, 1e4, -20.0, -100.0, -1e4, 0.0])
    deltas[:len(edge), 2] = edge
    deltas[:len(edge), 3] = edge[::-1]
    deltas[len(edge):100, 2:] = f32(rng.uniform(-30, 30, (100 - len(edge), 2)))
    deltas[100:150, 2:] = 0  # exp(0) = 1 exactly: the rest of the arithmetic must be bit-exact.
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=CLIP)
    rel, boxes = t(deltas), t(ref)
    out['decode/rpn/deltas'] = deltas
    out['decode/rpn/reference'] = ref
    out['decode/rpn/out'] = coder.decode(rel, [boxes]).reshape(n, 4).numpy()
    out['decode/rpn/exp'] = torch.stack([torch.exp(torch.clamp(rel[:, 2::4] / 1.0, max=CLIP)),
                                         torch.exp(torch.clamp(rel[:, 3::4] / 1.0, max=CLIP))],
                                        -1).numpy()

    r = 300
    proposals = box_ops.clip_boxes_to_image(
        coder.decode(t(f32(rng.normal(0, 0.5, (r, 4)))), [t(ref[:r])]).reshape(r, 4), (800, 1066))
    deltas = f32(rng.normal(0, 2, (r, 8)))
    deltas[:40, [2, 3, 6, 7]] = f32(rng.uniform(15, 40, (40, 4)))  # / 5 hits the clip.
    deltas[40:60, [2, 3, 6, 7]] = 0
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=CLIP)
    rel = t(deltas)
    out['decode/roi/deltas'] = deltas
    out['decode/roi/reference'] = proposals.numpy()
    out['decode/roi/out'] = coder.decode(rel, [proposals]).numpy()  # (R, 2, 4)
    out['decode/roi/exp'] = torch.stack([torch.exp(torch.clamp(rel[:, 2::4] / 5.0, max=CLIP)),
                                         torch.exp(torch.clamp(rel[:, 3::4] / 5.0, max=CLIP))],
                                        -1).numpy()  # (R, 2 classes, (w, h))


def clip_and_size_cases(rng, out):
    boxes = random_boxes(rng, 200, lo=-100, hi=1150)
    boxes[:4] = f32([[-1e-3, -0.0, 1066.0, 800.0], [1066.5, 800.5, 2000, 1000],
                     [-50, -50, -10, -10], [0.25, 0.5, 1065.99, 799.99]])
    out['clip/boxes'] = boxes
    out['clip/size'] = np.array([800, 1066], np.int64)
    out['clip/out'] = box_ops.clip_boxes_to_image(t(boxes), (800, 1066)).numpy()

    small = random_boxes(rng, 100, wmin=0, wmax=0.05)
    sizes = []
    for m in (1e-3, 1e-2):
        v = np.float32(m)
        sizes += [v, np.nextafter(v, np.float32(0)), np.nextafter(v, np.float32(1))]
    for i, s in enumerate(sizes):  # exact widths / heights at and around float32(min_size)
        small[2 * i] = [0, 0, s, 1]
        small[2 * i + 1] = [5, 0, 6, s]
    small[20:40] = random_boxes(rng, 20, wmin=0.005, wmax=0.015)
    out['small/boxes'] = small
    for m, key in ((1e-3, '1e-3'), (1e-2, '1e-2')):
        mask = np.zeros(len(small), bool)
        mask[box_ops.remove_small_boxes(t(small), m).numpy()] = True
        out[f'small/keep_{key}'] = mask

    b1 = random_boxes(rng, 60, wmax=300)
    b2 = np.concatenate([random_boxes(rng, 45, wmax=300), b1[:3], f32([[5, 5, 5, 9], [1, 1, 1, 1]])])
    b1[-1] = [1, 1, 1, 1]  # empty vs empty: 0 / 0 = NaN
    out['iou/boxes1'], out['iou/boxes2'] = b1, b2
    out['iou/out'] = box_ops.box_iou(t(b1), t(b2)).numpy()
    out['iou/area1'] = box_ops.box_area(t(b1)).numpy()


def nms_cases(rng, out):
    def case(name, boxes, scores, thresholds):
        out[f'nms/{name}/boxes'] = f32(boxes)
        out[f'nms/{name}/scores'] = f32(scores)
        for thr in thresholds:
            out[f'nms/{name}/keep_{thr}'] = torchvision.ops.nms(t(f32(boxes)), t(f32(scores)), thr).numpy()

    case('random', random_boxes(rng, 600), rng.random(600), (0.5, 0.7))

    base = random_boxes(rng, 100, hi=600)
    boxes = base[rng.integers(0, 100, 400)]  # exact duplicates
    scores = f32(rng.choice([0.3, 0.6, 0.9, 1.0], 400))  # many ties
    case('ties', boxes, scores, (0.5, 0.7))

    grid = [[x, y, x + 10, y + 10] for x in range(0, 100, 10) for y in range(0, 100, 10)]
    pairs = [[200, 0, 204, 1], [200, 0, 202, 1],  # IoU exactly 0.5: kept at thr 0.5 (strict >)
             [300, 0, 301, 1], [300, 0, 310, 1],  # IoU 1/10 = float32(0.1) > 0.1: gone at thr 0.1
             [400, 0, 410, 10], [410, 0, 420, 10], [400, 10, 410, 20]]  # touching edges
    boxes = f32(grid + pairs)
    scores = f32(rng.random(len(boxes)))
    scores[100:] = [0.9, 0.8, 0.9, 0.8, 0.9, 0.8, 0.7]
    case('touching', boxes, scores, (0.1, 0.5, 0.7))


def batched_rpn(rng, out):
    anchors = all_anchors('800x1088')
    counts = [163200, 40800, 10200, 2550, 663]
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=CLIP)
    boxes, level = [], []
    for i, (start, count) in enumerate(zip(np.cumsum([0] + counts[:-1]), counts)):
        ref = anchors[start + rng.permutation(count)]
        deltas = f32(rng.normal(0, 1, ref.shape) * [0.1, 0.1, 0.3, 0.3])
        b = coder.decode(t(deltas), [t(ref)]).reshape(-1, 4)
        b = box_ops.clip_boxes_to_image(b, (800, 1066))
        b = b[box_ops.remove_small_boxes(b, 1e-3)][:1000]  # RPN: top-1000 per level, then filters
        boxes.append(b)
        level.append(np.full(len(b), i))
    boxes, idxs = torch.cat(boxes), t(np.concatenate(level))
    logits = f32(rng.normal(0, 3, len(boxes)))
    logits[rng.random(len(boxes)) < 0.15] = f32(rng.uniform(17, 30, 1))  # sigmoid -> exactly 1.0
    scores = torch.sigmoid(t(logits))
    assert len(boxes) == 4663 and int((scores == 1).sum()) > 100, (len(boxes), int((scores == 1).sum()))
    out['batched/rpn/boxes'] = boxes.numpy()
    out['batched/rpn/scores'] = scores.numpy()
    out['batched/rpn/groups'] = idxs.numpy().astype(np.int32)
    out['batched/rpn/keep'] = torchvision.ops.batched_nms(boxes, scores, idxs, 0.7).numpy()
    out['batched/rpn/keep_vanilla'] = box_ops._batched_nms_vanilla(boxes, scores, idxs, 0.7).numpy()
    out['batched/rpn/keep_offset'] = box_ops._batched_nms_coordinate_trick(
        boxes, scores, idxs, 0.7).numpy()


def batched_head(rng, out):
    centres = f32(rng.uniform(150, 900, (3, 2)))
    c = centres[rng.integers(0, 3, 1000)] + f32(rng.normal(0, 8, (1000, 2)))
    wh = f32(rng.uniform(80, 140, (1000, 2)))
    boxes = f32(np.concatenate([c - wh / 2, c + wh / 2], 1))
    scores = f32(rng.uniform(0.6, 1.0, 1000))
    scores[rng.random(1000) < 0.1] = 1.0
    labels = torch.ones(1000, dtype=torch.int64)
    out['batched/head/boxes'] = boxes
    out['batched/head/scores'] = scores
    out['batched/head/keep'] = torchvision.ops.batched_nms(t(boxes), t(scores), labels, 0.5).numpy()
    out['batched/head/keep_plain'] = torchvision.ops.nms(t(boxes), t(scores), 0.5).numpy()


def flip_pairs(rng, groups, max_coordinate, thr=0.5):
    """One pair per 150 px cell whose IoU > thr decision under torchvision's offset differs from
    an alternative: no offset (cells 0, 3, ...), ``group * max`` without the ``+ 1`` (1, 4, ...),
    or the shift fused into one rounding, ``fma(group, max + 1, x)`` (2, 5, ...)."""
    def iou(p, q):
        w = np.maximum(np.minimum(p[:, 2], q[:, 2]) - np.maximum(p[:, 0], q[:, 0]), np.float32(0))
        h = np.maximum(np.minimum(p[:, 3], q[:, 3]) - np.maximum(p[:, 1], q[:, 1]), np.float32(0))
        inter = w * h
        ap = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
        aq = (q[:, 2] - q[:, 0]) * (q[:, 3] - q[:, 1])
        return inter / (ap + aq - inter)

    top = np.float32(max_coordinate)
    boxes, kinds = [], []
    for cell, g in enumerate(groups):
        g32 = np.float32(g)
        shift = g32 * (top + np.float32(1))
        alternatives = (lambda x: x, lambda x: x + g32 * top,
                        lambda x: f32(x.astype(np.float64) + float(g) * float(top + np.float32(1))))
        x0, y0 = 150.0 * (cell % 6), 150.0 * (cell // 6)
        for attempt in range(40):
            # Some alternatives cannot differ in some cells (the two shifts put the cell on the
            # same float32 grid); fall back to 'no offset' after 10 batches.
            alternative = alternatives[cell % 3 if attempt < 10 else 0]
            n = 200_000
            a = f32(np.stack([x0 + rng.uniform(0, 20, n), y0 + rng.uniform(0, 20, n)], 1))
            wh = f32(rng.uniform(30, 100, (n, 2)))
            a = f32(np.concatenate([a, a + wh], 1))
            b = a.copy()
            b[:, [0, 2]] += f32((a[:, 2] - a[:, 0]) / 3 + rng.normal(0, 0.01, n))[:, None]
            torchvision_rule = iou(a + shift, b + shift) > thr
            found = np.flatnonzero(torchvision_rule != (iou(alternative(a), alternative(b)) > thr))
            if len(found):
                boxes += [a[found[0]], b[found[0]]]
                kinds.append(('no offset', 'no +1', 'fma')[cell % 3 if attempt < 10 else 0])
                break
        else:
            raise RuntimeError(f'no flipping pair found in cell {cell}')
    print('flip pairs against:', {k: kinds.count(k) for k in set(kinds)})
    return f32(boxes)


def batched_flip(rng, out):
    top = np.float32(999.3741)  # full mantissa: group * (top + 1) is rounded, as in real use
    frame = f32([[0, 0, top, top]])  # group 0; fixes the max coordinate
    groups = [1, 2, 3] * 8
    pairs = flip_pairs(rng, groups, top)
    fill = random_boxes(rng, 1001 - 1 - len(pairs), lo=920, hi=990, wmin=0.5, wmax=4)
    boxes = np.concatenate([frame, pairs, fill])
    assert boxes.max() == top and len(boxes) == 1001
    group = np.concatenate([[0], np.repeat(groups, 2), rng.integers(0, 4, len(fill))]).astype(np.int32)
    scores = f32(rng.permutation(1001) / 1001.0 + 1e-3)
    for i in range(1, len(pairs) + 1, 2):
        scores[i], scores[i + 1] = 0.999 - i / 1e4, 0.9985 - i / 1e4  # pair: first box wins
    out['batched/flip/boxes'] = boxes
    out['batched/flip/scores'] = scores
    out['batched/flip/groups'] = group
    b, s, g = t(boxes), t(scores), t(group.astype(np.int64))
    out['batched/flip/keep_1001'] = torchvision.ops.batched_nms(b, s, g, 0.5).numpy()
    out['batched/flip/keep_1000'] = torchvision.ops.batched_nms(b[:1000], s[:1000], g[:1000], 0.5).numpy()
    # Sanity: the two paths disagree on the first 1000 boxes, the vanilla one equals per-group.
    vanilla = box_ops._batched_nms_vanilla(b[:1000], s[:1000], g[:1000], 0.5).numpy()
    assert set(vanilla) != set(out['batched/flip/keep_1000'])
    assert np.array_equal(out['batched/flip/keep_1001'],
                          box_ops._batched_nms_vanilla(b, s, g, 0.5).numpy())


def anchor_cases(rng, out):
    gen = AnchorGenerator(FPN_SIZES, (RATIOS,) * len(FPN_SIZES))
    for size, cell in zip(FPN_SIZES, gen.cell_anchors):
        out[f'anchors/cell/{size[0]}'] = cell.numpy()
    odd_sizes, odd_ratios = (16, 33, 45, 47, 181), (0.25, 0.5, 1.0, 1.5, 2.0, 4.0)
    out['anchors/cell_odd/sizes'] = np.array(odd_sizes, np.int64)
    out['anchors/cell_odd/ratios'] = np.array(odd_ratios, np.float64)
    out['anchors/cell_odd'] = gen.generate_anchors(list(odd_sizes), list(odd_ratios)).numpy()
    for name in PADDED:
        a = all_anchors(name)
        counts = [h * w * 3 for h, w in FEATURE_SIZES[name]]
        assert sum(counts) == len(a)
        starts = np.cumsum([0] + counts)
        rows = rng.choice(len(a), 256, replace=False)
        key = f'anchors/{name}'
        out[f'{key}/feature_sizes'] = np.array(FEATURE_SIZES[name], np.int64)
        out[f'{key}/counts'] = np.array(counts, np.int64)
        digest = hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()
        out[f'{key}/sha256'] = np.array(digest)
        out[f'{key}/head'] = np.stack([a[s:s + 24] for s in starts[:-1]])
        out[f'{key}/tail'] = np.stack([a[e - 24:e] for e in starts[1:]])
        out[f'{key}/pool'] = a[starts[-2]:]
        out[f'{key}/rows'] = rows.astype(np.int64)
        out[f'{key}/rows_value'] = a[rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).resolve().parents[2] / 'tests' / 'fixtures')
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {
        'meta/torch': np.array(torch.__version__), 'meta/torchvision': np.array(torchvision.__version__),
        'meta/cpu_capability': np.array(torch.backends.cpu.get_cpu_capability()),
    }
    for make in (decode_cases, clip_and_size_cases, nms_cases, batched_rpn, batched_head,
                 batched_flip, anchor_cases):
        make(rng, out)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'detector_box_ops.npz'
    np.savez_compressed(path, **out)
    print(f'{path}: {len(out)} arrays, {path.stat().st_size / 1024:.0f} KB')


if __name__ == '__main__':
    main()
