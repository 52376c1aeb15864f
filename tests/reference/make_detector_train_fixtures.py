"""Golden detector training steps from DeepLabCut 3.0.2's Faster R-CNN (run inside .ref/).

    .ref/bin/python tests/reference/make_detector_train_fixtures.py --out tests/fixtures

1. Builds DeepLabCut's SuperAnimal detector (torchvision ``fasterrcnn_resnet50_fpn_v2``, 2
   classes) with the calibrated synthetic weights of ``detector_overrides.npz``, BatchNorm
   statistics frozen as DeepLabCut's ``freeze_bn_stats`` (``detector.train()``).
2. A batch of three vendored openfield frames (480x640), normalised as DeepLabCut's dataset does
   (augmentation and the resize collate off), with boxes from the labelled keypoints by
   DeepLabCut's own ``bbox_from_keypoints`` (margin 25): img0003 one box, img0010 two (its own
   and img0020's), img0020 none (a zero box, which DeepLabCut's ``get_target`` drops).  Only
   deviation from DeepLabCut's run: torchvision's transform resizes to 400 / <= 667 instead of
   800 / <= 1333, so that the golden (and our test) stays small; the resize arithmetic is the same.
3. Three steps of DeepLabCut's detector step (losses summed, backward, ``torch.optim.AdamW(lr
   1e-5, weight decay 0.01)``: DeepLabCut's detector fine-tuning optimiser), recording for every
   step what torchvision computed and drew: anchors, RPN labels and regression targets, both
   samplers' masks (``BalancedPositiveNegativeSampler.__call__`` wrapped), the training
   proposals, the RoI labels over the proposals with the ground truth appended and the regression
   targets of the sampled RoIs, the four losses; step-0 gradients and the parameters after three
   steps (at most ``SUBSET`` elements per leaf, as make_train_fixtures.py stores them).
4. The same in float64 (``detector.double()``) replaying the float32 run's draws and proposals
   (the samplers and ``filter_proposals`` return what the float32 run recorded, cast to float64):
   the exact-arithmetic result of the same steps, against which float32 rounding is measured.
About two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
from make_detector_fixtures import build_detector, frames
from make_train_fixtures import store

from _reference import DATA, ROOT, normalize_crops, synthetic

FIXTURES = ROOT / 'tests' / 'fixtures'
PROJECT = FIXTURES / 'openfield_project'
FRAMES = ('img0003.png', 'img0010.png', 'img0020.png')
MARGIN = 25
MIN_SIZE, MAX_SIZE = 400, 667
STEPS = 3
LR, WEIGHT_DECAY = 1e-5, 0.01
THREADS = 2


def labelled_boxes() -> np.ndarray:
    """``(3, 2, 4)`` xywh: DeepLabCut's ``bbox_from_keypoints`` on the project's labels."""
    import pandas as pd
    from deeplabcut.pose_estimation_pytorch.data.utils import bbox_from_keypoints

    labels = pd.read_csv(PROJECT / 'labeled-data' / 'm4s1' / 'CollectedData_Pranav.csv', header=[0, 1, 2],
                         index_col=0)
    found = {}
    for name in ('img0003.png', 'img0010.png', 'img0020.png'):
        row = labels.loc[f'labeled-data/m4s1/{name}'].to_numpy(np.float64).reshape(-1, 2)
        keypoints = np.concatenate([row, np.where(np.isnan(row[:, :1]), 0, 2)], axis=1)
        found[name] = bbox_from_keypoints(keypoints, 480, 640, MARGIN)
    boxes = np.zeros((3, 2, 4))
    boxes[0, 0] = found['img0003.png']
    boxes[1, 0], boxes[1, 1] = found['img0010.png'], found['img0020.png']
    return boxes


class Recorder:
    """Wraps torchvision's training internals on one model and records what they compute."""

    def __init__(self, tv, replay: list[dict] | None = None):
        self.steps: list[dict] = []
        self.replay = replay
        rpn, heads = tv.rpn, tv.roi_heads
        for owner, name in ((rpn, 'assign_targets_to_anchors'), (rpn, 'filter_proposals'),
                            (heads, 'add_gt_proposals'), (heads, 'select_training_samples')):
            setattr(owner, name, self._wrap(name, getattr(owner, name)))
        rpn.fg_bg_sampler = self._sampler('rpn', rpn.fg_bg_sampler)
        heads.fg_bg_sampler = self._sampler('roi', heads.fg_bg_sampler)
        self.box_coder = rpn.box_coder

    @property
    def now(self) -> dict:
        return self.steps[-1]

    def _wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if name == 'filter_proposals' and self.replay is not None:
                self.now['native_proposals'] = [b.detach().clone() for b in out[0]]
                recorded = self.replay[len(self.steps) - 1]['proposals']
                out = ([b.to(out[0][0].dtype) for b in recorded], out[1])
            if name == 'assign_targets_to_anchors':
                anchors = args[0]
                labels, matched = out
                self.now['anchors'] = anchors[0].detach().clone()
                self.now['rpn_labels'] = [t.detach().clone() for t in labels]
                self.now['rpn_targets'] = [self.box_coder.encode_single(m.detach(), a.detach())
                                           for m, a in zip(matched, anchors)]
            elif name == 'filter_proposals':
                self.now['proposals'] = [b.detach().clone() for b in out[0]]
            elif name == 'add_gt_proposals':
                self.now['all_proposals'] = [b.detach().clone() for b in out]
            else:
                _, _, labels, targets = out
                self.now['sampled_labels'] = [t.detach().clone() for t in labels]
                self.now['sampled_targets'] = [t.detach().clone() for t in targets]
            return out
        return wrapped

    def _sampler(self, stage: str, sampler):
        import torch

        recorder = self

        class Recording:
            def __call__(self, matched_idxs):
                pos, neg = sampler(matched_idxs)
                if recorder.replay is not None:
                    record = recorder.replay[len(recorder.steps) - 1]
                    pos = [p.to(torch.uint8) for p in record[f'{stage}_pos']]
                    neg = [n.to(torch.uint8) for n in record[f'{stage}_neg']]
                recorder.now[f'{stage}_input_labels'] = [t.detach().clone() for t in matched_idxs]
                recorder.now[f'{stage}_pos'] = [p.detach().clone().bool() for p in pos]
                recorder.now[f'{stage}_neg'] = [n.detach().clone().bool() for n in neg]
                return pos, neg

            def __getattr__(self, item):
                return getattr(sampler, item)

        return Recording()


def run(state: dict, images: np.ndarray, boxes: np.ndarray, double: bool, replay: list[dict] | None = None
        ) -> tuple[Recorder, dict, dict]:
    import torch

    detector = build_detector()
    detector.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    detector.freeze_bn_stats = True  # DeepLabCut's fasterrcnn_resnet50_fpn_v2.yaml.
    tv = detector.model
    tv.transform.min_size, tv.transform.max_size = (MIN_SIZE,), MAX_SIZE
    dtype = torch.float64 if double else torch.float32
    detector.to(dtype)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dtype)
    annotations = {'boxes': torch.from_numpy(boxes).to(dtype),
                   'area': torch.from_numpy(boxes[..., 2] * boxes[..., 3]).to(dtype),
                   'labels': torch.ones(boxes.shape[:2]), 'is_crowd': torch.zeros(boxes.shape[:2])}
    recorder = Recorder(tv, replay)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    grads = {}
    for step in range(STEPS):
        recorder.steps.append({})
        optimizer.zero_grad()
        detector.train()
        target = detector.get_target({k: v.clone() for k, v in annotations.items()})
        losses, _ = detector(x, target)
        total = sum(losses.values())
        total.backward()
        recorder.now['losses'] = {k: float(v) for k, v in losses.items()}
        if step == 0:
            grads = {k: p.grad.detach().clone() for k, p in detector.named_parameters()}
        optimizer.step()
    params = {k: p.detach().clone() for k, p in detector.named_parameters()}
    return recorder, grads, params


def save_steps(out: dict, prefix: str, recorder: Recorder) -> None:
    out[f'{prefix}anchors'] = recorder.steps[0]['anchors'].numpy()
    for s, record in enumerate(recorder.steps):
        out[f'{prefix}{s}/losses'] = np.array([record['losses'][k] for k in (
            'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg')])
        for i in range(len(record['rpn_labels'])):
            labels = record['rpn_labels'][i].numpy()
            positive = labels == 1
            out[f'{prefix}{s}/{i}/rpn_labels'] = labels.astype(np.int8)
            out[f'{prefix}{s}/{i}/rpn_targets'] = record['rpn_targets'][i].numpy()[positive]
            out[f'{prefix}{s}/{i}/rpn_pos'] = record['rpn_pos'][i].numpy()
            out[f'{prefix}{s}/{i}/rpn_neg'] = record['rpn_neg'][i].numpy()
            out[f'{prefix}{s}/{i}/proposals'] = record['proposals'][i].numpy()
            if 'native_proposals' in record:  # The float64 run's own, before the replayed ones replace them.
                out[f'{prefix}{s}/{i}/native_proposals'] = record['native_proposals'][i].numpy()
            out[f'{prefix}{s}/{i}/all_proposals'] = record['all_proposals'][i].numpy()
            out[f'{prefix}{s}/{i}/roi_labels'] = record['roi_input_labels'][i].numpy().astype(np.int8)
            out[f'{prefix}{s}/{i}/roi_pos'] = record['roi_pos'][i].numpy()
            out[f'{prefix}{s}/{i}/roi_neg'] = record['roi_neg'][i].numpy()
            out[f'{prefix}{s}/{i}/sampled_labels'] = record['sampled_labels'][i].numpy().astype(np.int8)
            out[f'{prefix}{s}/{i}/sampled_targets'] = record['sampled_targets'][i].numpy()


def main() -> None:
    import deeplabcut
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    state = synthetic.fixture_state(FIXTURES, 'detector')
    images = np.asarray(normalize_crops(frames(FRAMES)), np.float32)
    boxes = labelled_boxes()
    golden = {'images_sha256': np.array(hashlib.sha256(images.tobytes()).hexdigest()), 'boxes_xywh': boxes}
    golden64 = {}
    keys, replay = None, None
    for double, out in ((False, golden), (True, golden64)):
        recorder, grads, params = run(state, images, boxes, double, replay)
        replay = recorder.steps
        keys = list(grads)
        save_steps(out, '', recorder)
        store(out, 'grad', grads, keys, full=False, with_index=not double)
        store(out, 'params3', params, keys, full=False)
    golden['leaf_keys'] = np.array(keys)
    np.savez_compressed(f'{args.out}/detector_train_golden.npz', **golden)
    np.savez_compressed(f'{args.out}/detector_train_golden_float64.npz', **golden64)
    info = {
        'made_by': 'tests/reference/make_detector_train_fixtures.py',
        'versions': {'deeplabcut': deeplabcut.__version__, 'torchvision': torchvision.__version__,
                     'torch': torch.__version__, 'numpy': np.__version__},
        'frames': [f'{DATA.name}/labeled-data/m4s1/{f}' for f in FRAMES], 'margin': MARGIN,
        'transform': {'min_size': MIN_SIZE, 'max_size': MAX_SIZE}, 'steps': STEPS,
        'optimizer': {'type': 'AdamW', 'lr': LR, 'weight_decay': WEIGHT_DECAY}, 'torch_threads': THREADS,
        'state_sha256': hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest(),
    }
    with open(f'{args.out}/detector_train_manifest.json', 'w') as f:
        f.write(json.dumps(info, indent=1) + '\n')


if __name__ == '__main__':
    main()
