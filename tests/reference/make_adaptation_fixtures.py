"""Golden video adaptation data from DeepLabCut 3.0.2's own ``video_inference_superanimal(...,
video_adapt=True)`` on an openfield clip (run inside .ref/).

    .ref/bin/python tests/reference/make_adaptation_fixtures.py --out tests/fixtures

1. Writes the synthetic SuperAnimal weights as the current released files
   (``synthetic.write_*_checkpoints``, ``dlc3``) and the first ``CLIP_FRAMES`` frames of the
   openfield video as an MJPG clip, then runs ``deeplabcut.video_inference_superanimal`` with
   ``video_adapt=True``: its first pass, its PNG dump of every frame and its pseudo-labels
   (``dlc3predictions_2_annotation_from_video``) all run as they do for a user.  The synthetic
   detector scores its boxes 0.63-0.73, so ``bbox_threshold`` is 0.6 (the default 0.9 would keep
   none), and its keypoints score >= 0.11, so ``pseudo_threshold`` is 0.3 (at 0.1 no keypoint would
   be masked); everything else is DeepLabCut's default but ``max_individuals`` (3).
2. ``adaptation_train`` itself runs too (the config changes it makes: frozen BatchNorm, batch 8,
   4 epochs), but the two ``apis.training.train`` calls it makes (detector, then pose) are
   recorded instead of run: this script then builds what ``train`` builds from those arguments
   (model, runner with the source snapshot, train transform, dataset, collate) and takes one
   float64 step of each on one batch, augmentation off:
   * pose: two annotations (one whose detector box leaves the frame, one with keypoints masked to
     "visible at (0, 0)"), DeepLabCut's crops (its ``top_down_crop`` recorded), targets, loss,
     gradients and the parameters after one AdamW step of the runner's own optimiser;
   * detector: the frame with the most boxes through DeepLabCut's ``ResizeFromDataSizeCollate``
     (its scale and offset draws recorded), then one step with both samplers' choices recorded
     (``make_detector_train_fixtures.Recorder``).  As in that script, torchvision's transform
     resizes to 400 / <= 667 instead of 800 / <= 1333 (the same arithmetic, a quarter of the
     memory); the collated batch itself is DeepLabCut's, stored whole (its antialiased resize is
     only within 2e-5 of ours, and the float64 step needs the same input).
3. Writes ``tests/fixtures/adaptation/``: ``predictions.json`` (the first pass's
   ``_before_adapt.json``, verbatim), ``train.json`` / ``test.json`` (DeepLabCut's pseudo-labels),
   ``frames/`` (DeepLabCut's PNGs of the frames the two batches use), ``pose_step.npz``,
   ``detector_step.npz`` and ``manifest.json`` (settings, the files the first pass wrote, the
   adaptation config, versions).  About five minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from make_detector_train_fixtures import Recorder, save_steps
from make_pipeline_fixtures import VIDEO, write_clip
from make_train_fixtures import recording_crops, store

from _reference import ROOT, nhwc, synthetic

FIXTURES = ROOT / 'tests' / 'fixtures'
CLIP_FRAMES = 30
SETTINGS = {'max_individuals': 3, 'bbox_threshold': 0.6, 'pseudo_threshold': 0.3, 'batch_size': 8,
            'video_adapt_batch_size': 8, 'pose_epochs': 4, 'detector_epochs': 4, 'pcutoff': 0.1}
MIN_SIZE, MAX_SIZE = 400, 667
THREADS = 2


class Recorded(Exception):
    """Stops ``video_inference_superanimal`` once both training calls are recorded."""


def run_deeplabcut(tmp: Path) -> tuple[dict, list[dict]]:
    """DeepLabCut's adaptation up to its two ``train`` calls, which are recorded."""
    import deeplabcut
    import deeplabcut.pose_estimation_pytorch.modelzoo.train_from_coco as train_from_coco

    state = synthetic.fixture_state
    pose = synthetic.write_pose_checkpoints(state(FIXTURES, 'pose'), tmp / 'weights')['dlc3']
    detector = synthetic.write_detector_checkpoints(state(FIXTURES, 'detector'), tmp / 'weights')['dlc3']
    video = tmp / 'videos' / 'clip.avi'
    video.parent.mkdir()
    clip = write_clip(video, CLIP_FRAMES)
    frame_size = tuple(clip['size'][::-1])
    calls = []

    def record(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise Recorded

    train, train_from_coco.train = train_from_coco.train, record
    try:
        deeplabcut.video_inference_superanimal(
            [str(video)], 'superanimal_topviewmouse', model_name='hrnet_w32',
            detector_name='fasterrcnn_resnet50_fpn_v2', customized_pose_checkpoint=str(pose),
            customized_detector_checkpoint=str(detector), video_adapt=True, device='cpu',
            create_labeled_video=False, **SETTINGS)
    except Recorded:
        pass
    finally:
        train_from_coco.train = train
    assert [str(c['task']) for c in calls] == ['Task.DETECT', 'Task.TOP_DOWN'], calls
    return {'video': video, 'frame_size': frame_size, 'clip': clip, 'pose': pose, 'detector': detector}, calls


def runner_and_model(call: dict, detector: bool):
    """What ``apis.training.train`` builds from its arguments: the model and the training runner
    (which loads the source snapshot), on the CPU."""
    from deeplabcut.pose_estimation_pytorch.models import DETECTORS, PoseModel
    from deeplabcut.pose_estimation_pytorch.runners import build_training_runner

    config = call['run_config']
    assert not config['train_settings'].get('weight_init')
    model = (DETECTORS.build(config['model'], weight_init=None, pretrained=False) if detector
             else PoseModel.build(config['model'], weight_init=None, pretrained_backbone=False))
    runner = build_training_runner(runner_config=config['runner'], model_folder=call['loader'].model_folder,
                                   task=call['task'], model=model, device='cpu',
                                   snapshot_path=call['snapshot_path'])
    return model, runner


def pose_step(call: dict, frame_size: tuple[int, int]) -> tuple[dict, dict]:
    import torch
    from deeplabcut.pose_estimation_pytorch.data import build_transforms
    from torch.utils.data import DataLoader, Subset

    loader, config = call['loader'], call['run_config']
    augmentation = {**config['data']['train'], 'affine': None, 'gaussian_noise': None}
    dataset = loader.create_dataset(transform=build_transforms(augmentation), mode='train', task=call['task'])
    h, w = frame_size
    boxes = np.array([a['bbox'] for a in dataset.annotations], np.float64)
    leaves = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 0] + boxes[:, 2] > w)
              | (boxes[:, 1] + boxes[:, 3] > h))
    masked = np.array([np.any(np.asarray(a['keypoints'], np.float64).reshape(-1, 3)[:, :2].sum(1) == 0)
                       for a in dataset.annotations])
    first = int(np.flatnonzero(leaves)[0]) if leaves.any() else 0
    second = next((int(i) for i in np.flatnonzero(masked) if i != first), 1 if first != 1 else 0)
    items = [first, second]
    record = []
    with recording_crops(dataset, record):
        batch = next(iter(DataLoader(Subset(dataset, items), batch_size=2, shuffle=False, num_workers=0)))
    model, runner = runner_and_model(call, detector=False)
    lr = runner.optimizer.param_groups[0]['lr']
    params0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.double()  # The optimizer keeps the same parameter objects.
    model.train()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn), 'freeze_bn_stats should keep BatchNorm in eval'
    runner.optimizer.zero_grad()
    outputs = model(batch['image'].double())
    targets = model.get_target(outputs, batch['annotations'])
    losses = model.get_loss(outputs, targets)
    losses['total_loss'].backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    runner.optimizer.step()
    params1 = {k: p.detach().clone() for k, p in model.named_parameters()}
    keys = list(grads)
    heat = targets['bodypart']['heatmap']
    golden = {
        'annotation_index': np.array(items),
        'image_ids': np.array([dataset.annotations[i]['image_id'] for i in items]),
        'batch/image_sha256': np.array(hashlib.sha256(nhwc(batch['image']).tobytes()).hexdigest()),
        'batch/image_strided': nhwc(batch['image'])[:, ::8, ::8],
        'batch/keypoints': batch['annotations']['keypoints'][:, 0].numpy(),
        'batch/bbox_crop': np.stack([r['bbox_crop'] for r in record]).astype(np.int64),
        'batch/offsets': batch['offsets'].numpy(), 'batch/scales': batch['scales'].numpy(),
        'targets/heatmap': nhwc(heat['target']).astype(np.float32),
        'targets/weights': nhwc(heat['weights']).astype(np.float32),
        'loss': np.float64(losses['total_loss'].item()), 'lr': np.float64(lr), 'leaf_keys': np.array(keys),
    }
    store(golden, 'grad', grads, keys, full=False, with_index=True)
    store(golden, 'params1', params1, keys, full=False)
    golden['update_maxabs'] = np.array([float((params1[k] - params0[k].double()).abs().max()) for k in keys])
    info = {'items': items, 'annotation_ids': [dataset.annotations[i]['id'] for i in items],
            'paths': [str(Path(p).name) for p in batch['path']], 'lr': lr,
            'loss': losses['total_loss'].item(),
            'train_transform': augmentation, 'box_leaves_frame': bool(leaves[first]),
            'masked_keypoints': bool(masked[second]),
            'optimizer': type(runner.optimizer).__name__,
            'optimizer_defaults': {k: v for k, v in runner.optimizer.defaults.items()
                                   if isinstance(v, (int, float, bool, tuple, type(None)))}}
    return golden, info


class Draws:
    """Records the collate's scale draws (its own generator) and its offsets (global numpy)."""

    def __init__(self, collate):
        self.values: list[tuple[str, float]] = []
        generator = collate.generator
        draws = self

        class Generator:
            def uniform(self, *args):
                value = generator.uniform(*args)
                draws.values.append(('uniform', float(value)))
                return value

        collate.generator = Generator()
        self.randint = np.random.randint

    def __enter__(self):
        def randint(*args, **kwargs):
            value = self.randint(*args, **kwargs)
            self.values.append(('integers', int(value)))
            return value

        np.random.randint = randint
        return self

    def __exit__(self, *exc):
        np.random.randint = self.randint


def detector_step(call: dict) -> tuple[dict, dict]:
    import torch
    from deeplabcut.pose_estimation_pytorch.data import build_transforms
    from deeplabcut.pose_estimation_pytorch.data.collate import COLLATE_FUNCTIONS
    from torch.utils.data import DataLoader, Subset

    loader, config = call['loader'], call['run_config']
    augmentation = {**config['data']['train'], 'hflip': None, 'affine': None}
    dataset = loader.create_dataset(transform=build_transforms(augmentation), mode='train', task=call['task'])
    counts = [sum(a['image_id'] == image['id'] for a in dataset.annotations) for image in dataset.images]
    item = int(np.argmax(counts))
    collate = COLLATE_FUNCTIONS.build(config['data']['train']['collate'])
    with Draws(collate) as draws:
        batch = next(iter(DataLoader(Subset(dataset, [item]), batch_size=1, shuffle=False,
                                     collate_fn=collate)))
    model, runner = runner_and_model(call, detector=True)
    lr = runner.optimizer.param_groups[0]['lr']
    tv = model.model
    tv.transform.min_size, tv.transform.max_size = (MIN_SIZE,), MAX_SIZE
    model.double()
    recorder = Recorder(tv)
    recorder.steps.append({})
    runner.optimizer.zero_grad()
    model.train()
    annotations = {k: (v.double() if torch.is_floating_point(v) else v)
                   for k, v in batch['annotations'].items()}
    target = model.get_target(annotations)
    losses, _ = model(batch['image'].double(), target)
    sum(losses.values()).backward()
    recorder.now['losses'] = {k: float(v) for k, v in losses.items()}
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    runner.optimizer.step()
    params1 = {k: p.detach().clone() for k, p in model.named_parameters()}
    keys = list(grads)
    image = nhwc(batch['image'])
    golden = {'boxes': batch['annotations']['boxes'].numpy(), 'image': image, 'lr': np.float64(lr),
              'leaf_keys': np.array(keys)}
    save_steps(golden, '', recorder)
    del golden['anchors']  # 1.8 MB, and checked against torchvision's in the detector tests.
    store(golden, 'grad', grads, keys, full=False, with_index=True)
    store(golden, 'params1', params1, keys, full=False)
    info = {'item': item, 'path': Path(batch['path'][0]).name, 'boxes_in_frame': counts[item],
            'draws': draws.values, 'collate': config['data']['train']['collate'],
            'train_transform': augmentation,
            'transform': {'min_size': MIN_SIZE, 'max_size': MAX_SIZE}, 'lr': lr,
            'losses': recorder.now['losses'], 'optimizer': type(runner.optimizer).__name__,
            'optimizer_defaults': {k: v for k, v in runner.optimizer.defaults.items()
                                   if isinstance(v, (int, float, bool, tuple, type(None)))}}
    return golden, info


def main() -> None:
    import cv2
    import deeplabcut
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    out = args.out / 'adaptation'
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, calls = run_deeplabcut(tmp)
        video = run['video']
        written = sorted(p.name for p in video.parent.iterdir())
        pseudo = video.parent / f'pseudo_{video.stem}'
        config_changes = {name: {'batch_size': c['run_config']['train_settings']['batch_size'],
                                 'epochs': c['run_config']['train_settings']['epochs'],
                                 'save_epochs': c['run_config']['runner']['snapshots']['save_epochs'],
                                 'optimizer': c['run_config']['runner']['optimizer'],
                                 'scheduler': c['run_config']['runner'].get('scheduler'),
                                 'snapshot_path': Path(c['snapshot_path']).name}
                          for name, c in zip(('detector', 'pose'), calls)}
        pose_golden, pose_info = pose_step(calls[1], run['frame_size'])
        detector_golden, detector_info = detector_step(calls[0])
        shutil.rmtree(out, ignore_errors=True)
        (out / 'frames').mkdir(parents=True)
        before = next(p for p in video.parent.iterdir() if p.name.endswith('_before_adapt.json'))
        shutil.copy(before, out / 'predictions.json')
        for split in ('train', 'test'):
            shutil.copy(pseudo / 'annotations' / f'{split}.json', out / f'{split}.json')
        for name in sorted({*pose_info['paths'], detector_info['path']}):
            shutil.copy(pseudo / 'images' / name, out / 'frames' / name)
        np.savez_compressed(out / 'pose_step.npz', **pose_golden)
        np.savez_compressed(out / 'detector_step.npz', **detector_golden)
        manifest = {
            'made_by': 'tests/reference/make_adaptation_fixtures.py',
            'clip': {'source': f'{VIDEO.parent.parent.name}/videos/{VIDEO.name}',
                     'frames': CLIP_FRAMES, 'codec': 'MJPG', 'frame_size': list(run['frame_size'])},
            'settings': SETTINGS, 'bodyparts': list(calls[1]['run_config']['metadata']['bodyparts']),
            'first_pass_files': written, 'pseudo_folder': sorted(p.name for p in pseudo.iterdir()),
            'pngs_written': len(list((pseudo / 'images').iterdir())),
            'adaptation_config': config_changes,
            'freeze_bn_stats': {'pose': calls[1]['run_config']['model']['backbone']['freeze_bn_stats'],
                                'detector': calls[0]['run_config']['model']['freeze_bn_stats']},
            'pose_step': pose_info, 'detector_step': detector_info,
            'versions': {'deeplabcut': deeplabcut.__version__, 'torch': torch.__version__,
                         'torchvision': torchvision.__version__, 'numpy': np.__version__,
                         'opencv': cv2.__version__},
            'torch_threads': THREADS,
        }
        (out / 'manifest.json').write_text(json.dumps(manifest, indent=1, default=str) + '\n')
    print(json.dumps({'first_pass_files': written, 'pose': {k: pose_info[k] for k in ('paths', 'loss', 'lr')},
                      'detector': {k: detector_info[k] for k in ('path', 'losses', 'draws')}}, default=str))


if __name__ == '__main__':
    main()
