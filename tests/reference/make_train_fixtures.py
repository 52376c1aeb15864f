"""Golden data for the training-step parity test, from DeepLabCut 3.0.2's own fine-tuning code
(run inside the reference env).

    .ref/bin/python tests/reference/make_train_fixtures.py --out tests/fixtures    # committed goldens
    .ref/bin/python tests/reference/make_train_fixtures.py --out /tmp/live --full  # reference tier (~250 MB)

SuperAnimal-TopViewMouse hrnet_w32 fine-tuning in conversion-table mode on the openfield
project, with every step done by DeepLabCut itself:
1. Copies the project (labels and images, read-only in ``DATA``) to a temp dir, points its
   config.yaml at the copy, writes the synthetic SuperAnimal weights
   (``synthetic.fixture_state``) as a DLC3 snapshot and builds DeepLabCut's weight
   initialisation from the project's conversion table (``modelzoo.build_weight_init``).
2. ``deeplabcut.create_training_dataset`` (top-down hrnet_w32 + fasterrcnn detector, that
   weight_init) writes the SuperAnimal fine-tune ``pytorch_config.yaml``
   (``PoseConfig.build_for_superanimal_finetune``); ``DLCLoader`` reads it back.
3. As ``apis.training.train`` does: ``PoseModel.build(cfg['model'], weight_init=...)`` (snapshot
   backbone + ``HeatmapHead.convert_weights`` with the conversion array),
   ``build_training_runner`` (AdamW and LRListScheduler from the config), the train transform
   from ``build_transforms`` with augmentation off (affine and gaussian_noise removed; what
   remains is auto_padding and normalize), ``loader.create_dataset(mode='train', task=TD)``,
   a ``DataLoader`` with the default collate (fixed order instead of shuffle) over the frames
   in ``FRAMES``.
4. ``model.train()`` (the backbone keeps its BatchNorms in eval: freeze_bn_stats) and 3 calls
   of ``PoseTrainingRunner.step(batch, 'train')`` on the same batch: zero_grad, forward,
   ``model.get_target`` (HeatmapGaussianGenerator), ``model.get_loss`` (WeightedMSECriterion +
   WeightedLossAggregator), backward, ``optimizer.step()``. The step-0 targets and outputs
   are what the runner itself used (recorded by wrapping ``model.get_target``).
5. The same step 0 in float64 on a freshly built model (``model.double()``; the runner's step
   casts inputs to float32, so the float64 pass calls the same model methods directly), then
   the same three steps with the AdamW its own runner builds (``params3`` and
   ``loss_per_step`` in the float64 file, and ``params3_32err_maxabs``: DeepLabCut's float32
   parameters minus its float64 ones after three steps).

Parameter tensors keep torch layout and key names; images and heatmaps are NHWC. Leaves with
at most ``SUBSET`` elements are stored in full (``grad/<key>``, ``params3/<key>``), larger ones
at ``SUBSET`` seeded flat indices (``grad_index/<key>``, the same for ``params3`` and for the
float64 file). Per-leaf full-leaf statistics are arrays in ``leaf_keys`` order (one npz member
per key and statistic would cost more in zip headers than the data): ``grad_maxabs``,
``grad_l2``, ``params0_maxabs``, ``params3_maxabs``, ``params3_l2``, ``update_maxabs``
(max |params3 - params0|); the float64 file adds ``grad32_err_maxabs`` / ``grad32_err_l2``
(DeepLabCut's float32 gradient minus its float64 one, over full leaves). ``--full`` keeps every
leaf whole (``*_full.npz``, about 430 MB for the two files; never committed). Takes under 2
minutes on 2 cores (about 3 with ``--full``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from _reference import DATA, ROOT, nhwc, synthetic

SUPER_ANIMAL = 'superanimal_topviewmouse'
MODEL_NAME, DETECTOR_NAME = 'hrnet_w32', 'fasterrcnn_resnet50_fpn_v2'
# Training frames: img0003 (crop inside the frame, isotropic scale) and img0052, whose keypoint
# box is clipped at the left frame edge and whose square crop needs padding at the top (0 in
# normalised space, i.e. the mean colour) with round-half-even ties (y1 = round(-6.5) = -6) and
# an anisotropic scale (159/256, 158/256).
FRAMES = ('labeled-data/m4s1/img0003.png', 'labeled-data/m4s1/img0052.png')
TEST_FRAMES = range(95, 100)  # 95/5 split = the project's TrainingFraction 0.95.
STEPS = 3
SUBSET = 256  # Flat indices kept per large leaf (committed files stay < 5 MB).
SEED = 0
THREADS = 2
NO_AUGMENTATION = {'affine': None, 'gaussian_noise': None}
ENTRY_POINTS = {
    'project': 'deeplabcut.create_training_dataset(net_type=top_down_hrnet_w32, detector_type, weight_init)',
    'config': 'PoseConfig.build_for_superanimal_finetune (via create_training_dataset), read by DLCLoader',
    'weight_init': 'deeplabcut.modelzoo.build_weight_init(with_decoder=True, customized_pose_checkpoint)',
    'model': 'PoseModel.build(cfg.model, weight_init=WeightInitialization.from_dict(...)) '
             '-> HeatmapHead.convert_weights(conversion_array)',
    'transform': 'data.build_transforms(data.train with affine=None, gaussian_noise=None)',
    'dataset': "DLCLoader.create_dataset(mode='train', task=Task.TOP_DOWN) -> PoseDataset.__getitem__",
    'collate': 'torch DataLoader default collate (data.train.collate is None), shuffle=False',
    'runner': 'runners.build_training_runner -> build_optimizer, schedulers.build_scheduler',
    'step': ("PoseTrainingRunner.step(batch, 'train'): model.get_target, model.get_loss, backward, "
             "optimizer.step"),
    'float64': 'model.double(); model(x), model.get_target, model.get_loss, backward (no optimizer step)',
}


def make_project(tmp: Path, snapshot: Path) -> tuple[Path, object]:
    """A writable copy of the openfield project with a SuperAnimal fine-tune shuffle 1."""
    import deeplabcut
    from deeplabcut.core.config import edit_config
    from deeplabcut.core.engine import Engine
    from deeplabcut.modelzoo import build_weight_init

    project = tmp / 'openfield'
    shutil.copytree(DATA, project, ignore=shutil.ignore_patterns('videos'))
    config = project / 'config.yaml'
    edit_config(config, {'project_path': str(project),
                         'video_sets': {str(project / 'videos' / 'm4s1.mp4'): {'crop': '0, 640, 0, 480'}}})
    weight_init = build_weight_init(
        cfg=config, super_animal=SUPER_ANIMAL, model_name=MODEL_NAME, detector_name=DETECTOR_NAME,
        with_decoder=True, memory_replay=False, customized_pose_checkpoint=snapshot,
        # Only the detector's own training would read it; the pose model never does.
        customized_detector_checkpoint=tmp / 'unused_detector.pt')
    test = list(TEST_FRAMES)
    train = [i for i in range(100) if i not in test]
    deeplabcut.create_training_dataset(
        str(config), Shuffles=[1], net_type=f'top_down_{MODEL_NAME}', detector_type=DETECTOR_NAME,
        weight_init=weight_init, userfeedback=False, trainIndices=[train], testIndices=[test],
        engine=Engine.PYTORCH)
    return config, weight_init


@contextlib.contextmanager
def recording_crops(dataset, record: list):
    """Records, per item, the keypoint box after the train transform (before DeepLabCut's
    ``bboxes.astype(int)``) and the arguments/results of its ``top_down_crop``."""
    import deeplabcut.pose_estimation_pytorch.data.dataset as dataset_module

    transform, crop = dataset.apply_transform_all_keypoints, dataset_module.top_down_crop

    def apply_transform_all_keypoints(*args, **kwargs):
        out = transform(*args, **kwargs)
        record.append({'bbox_transformed': np.array(out['bboxes'], np.float64).reshape(-1, 4)[0],
                       'image_shape': out['image'].shape})
        return out

    def top_down_crop(image, bbox, *args, **kwargs):
        out = crop(image, bbox, *args, **kwargs)
        record[-1].update(bbox_crop=np.array(bbox), offsets=out[1], scales=out[2])
        return out

    dataset.apply_transform_all_keypoints = apply_transform_all_keypoints
    dataset_module.top_down_crop = top_down_crop
    try:
        yield
    finally:
        del dataset.apply_transform_all_keypoints
        dataset_module.top_down_crop = crop


def train_batch(loader, train_aug: dict):
    """DeepLabCut's collated batch of ``FRAMES`` (train mode, augmentation off) and what its
    dataset did to make it."""
    from deeplabcut.pose_estimation_pytorch.data import build_transforms
    from deeplabcut.pose_estimation_pytorch.task import Task
    from torch.utils.data import DataLoader, Subset

    transform = build_transforms(train_aug)
    dataset = loader.create_dataset(transform=transform, mode='train', task=Task.TOP_DOWN)
    paths = [img['file_name'] for img in dataset.images]
    ids = [dataset.images[paths.index(str(loader.project_path / f))]['id'] for f in FRAMES]
    items = [next(i for i, a in enumerate(dataset.annotations) if a['image_id'] == image_id)
             for image_id in ids]
    record = []
    with recording_crops(dataset, record):
        # apis.training.train's DataLoader (default collate: data.train.collate is None), in a
        # fixed order instead of shuffle=True.
        batch = next(iter(DataLoader(Subset(dataset, items), batch_size=len(items), shuffle=False,
                                     num_workers=0, pin_memory=False)))
    annotations = [dataset.annotations[i] for i in items]
    return batch, annotations, record, transform


def leaf_subset(key: str, n: int) -> np.ndarray | None:
    """Sorted flat indices kept for a leaf of ``n`` elements (None: kept whole)."""
    if n <= SUBSET:
        return None
    rng = np.random.default_rng([SEED, zlib.crc32(key.encode())])
    return np.sort(rng.choice(n, SUBSET, replace=False)).astype(np.int32)


def store(out: dict, prefix: str, tensors: dict, keys: list, full: bool, with_index: bool = False) -> None:
    """``<prefix>/<key>`` values (whole, or at the leaf's subset), and full-leaf max |x| and
    L2 norm as arrays ``<prefix>_maxabs``, ``<prefix>_l2`` in ``keys`` order."""
    maxabs, l2 = [], []
    for key in keys:
        flat = tensors[key].detach().reshape(-1).numpy()
        maxabs.append(np.abs(flat).max())
        l2.append(np.sqrt(np.sum(np.square(flat.astype(np.float64)))))
        index = None if full else leaf_subset(key, flat.size)
        if index is None:
            out[f'{prefix}/{key}'] = tensors[key].detach().numpy().copy()
        else:
            out[f'{prefix}/{key}'] = flat[index].copy()
            if with_index:
                out[f'grad_index/{key}'] = index
    out[f'{prefix}_maxabs'] = np.array(maxabs, flat.dtype)
    out[f'{prefix}_l2'] = np.array(l2, np.float64)


def build_model(cfg, weight_init_cfg):
    """apis.training.train's model: the SuperAnimal snapshot through DeepLabCut's weight init."""
    from deeplabcut.core.weight_init import WeightInitialization
    from deeplabcut.pose_estimation_pytorch.models import PoseModel

    return PoseModel.build(cfg['model'], weight_init=WeightInitialization.from_dict(weight_init_cfg),
                           pretrained_backbone=False)


def state_sha256(state) -> str:
    return hashlib.sha256(b''.join(np.ascontiguousarray(v).tobytes() for v in state.values())).hexdigest()


def main() -> None:
    import albumentations
    import deeplabcut
    import deeplabcut.pose_estimation_pytorch.utils as dlc_utils
    import timm
    import torch
    from deeplabcut.pose_estimation_pytorch.data import DLCLoader
    from deeplabcut.pose_estimation_pytorch.runners import build_training_runner
    from deeplabcut.pose_estimation_pytorch.task import Task

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--full', action='store_true', help='keep every leaf in full (~250 MB)')
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    state27 = synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'pose')

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        snapshot = synthetic.write_pose_checkpoints(state27, tmp / 'weights')['dlc3']
        config, weight_init = make_project(tmp, snapshot)
        loader = DLCLoader(str(config), shuffle=1, trainset_index=0)
        cfg = loader.model_cfg
        cfg_dict = cfg.model_dump()
        dlc_utils.fix_seeds(cfg['train_settings']['seed'])  # As train_network does (torch.manual_seed).

        model = build_model(cfg, cfg_dict['train_settings']['weight_init'])
        model.to('cpu')
        runner = build_training_runner(runner_config=cfg['runner'], model_folder=loader.model_folder,
                                       task=Task.TOP_DOWN, model=model, device='cpu')
        train_aug = {**cfg_dict['data']['train'], **NO_AUGMENTATION}
        batch, annotations, record, transform = train_batch(loader, train_aug)
        bbox_margin = cfg['data'].get('bbox_margin', 20)  # DLCLoader.load_data's expression.

        state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params0 = {k: v.detach().clone() for k, v in model.named_parameters()}
        conversion = np.asarray(weight_init.conversion_array)
        head = 'heads.bodypart.heatmap_head.deconv_layers.0.'
        assert np.array_equal(state0[head + 'weight'].numpy(), state27[head + 'weight'][:, conversion])
        assert np.array_equal(state0[head + 'bias'].numpy(), state27[head + 'bias'][conversion])

        # --- The training steps, by DeepLabCut's runner. ---
        captured = {}
        get_target = model.get_target

        def recording_get_target(outputs, labels):
            targets = get_target(outputs, labels)
            captured.setdefault('outputs', {k: {n: t.detach().clone() for n, t in v.items()}
                                            for k, v in outputs.items()})
            captured.setdefault('targets', targets)
            return targets

        model.get_target = recording_get_target
        model.train()  # As TrainingRunner._epoch does before its steps.
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn and not any(m.training for m in bn), 'freeze_bn_stats should keep BatchNorm in eval'
        losses, lrs, all_losses = [], [], []
        for step in range(STEPS):
            lrs.append(runner.optimizer.param_groups[0]['lr'])
            out = runner.step(batch, mode='train')
            losses.append(float(out['total_loss']))
            all_losses.append({k: float(v) for k, v in out.items()})
            if step == 0:
                grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
                         if p.grad is not None}
                no_grad = [k for k, p in model.named_parameters() if p.grad is None]
        del model.get_target
        params3 = {k: v.detach().clone() for k, v in model.named_parameters()}
        assert all(torch.equal(params0[k], params3[k])
                   for k in no_grad), 'AdamW moved a parameter without grad'
        assert all(m.num_batches_tracked.item() == 0 for m in bn), 'BatchNorm statistics changed'
        assert all(torch.equal(state0[k], v) for k, v in model.state_dict().items()
                   if k.endswith(('running_mean', 'running_var'))), 'BatchNorm statistics changed'

        # --- Step 0 in float64, same initialisation, same DeepLabCut model methods. ---
        model64 = build_model(cfg, cfg_dict['train_settings']['weight_init']).double()
        model64.train()
        outputs64 = model64(batch['image'].double())
        losses64 = model64.get_loss(outputs64, model64.get_target(outputs64, batch['annotations']))
        losses64['total_loss'].backward()
        grads64 = {k: p.grad.detach().clone() for k, p in model64.named_parameters() if p.grad is not None}
        assert sorted(grads64) == sorted(grads)
        # The three AdamW steps in float64 too, with the optimizer DeepLabCut's runner builds.
        runner64 = build_training_runner(runner_config=cfg['runner'], model_folder=loader.model_folder,
                                         task=Task.TOP_DOWN, model=model64, device='cpu')
        loss_per_step64 = [losses64['total_loss'].item()]
        runner64.optimizer.step()
        for _ in range(STEPS - 1):
            runner64.optimizer.zero_grad()
            out64 = model64(batch['image'].double())
            step_losses = model64.get_loss(out64, model64.get_target(out64, batch['annotations']))
            step_losses['total_loss'].backward()
            loss_per_step64.append(step_losses['total_loss'].item())
            runner64.optimizer.step()
        params3_64 = {k: v.detach().clone() for k, v in model64.named_parameters()}

        config_text = Path(cfg_dict['metadata']['pose_config_path']).read_text()
        image_paths = [str(Path(p).relative_to(loader.project_path)) for p in batch['path']]

    # --- Sanity checks. ---
    targets = captured['targets']['bodypart']['heatmap']
    heat = captured['outputs']['bodypart']['heatmap']
    keypoints = batch['annotations']['keypoints'][:, 0].numpy()
    assert np.isfinite(losses).all() and np.isfinite(losses64['total_loss'].item())
    assert all(float(g.abs().max()) > 0 for g in grads.values()), 'a gradient is all zero'
    peaks = targets['target'].amax(dim=(2, 3)).numpy()
    assert (peaks > 0.9).all(), peaks
    for b in range(len(FRAMES)):
        for k in range(keypoints.shape[1]):
            iy, ix = np.unravel_index(int(targets['target'][b, k].argmax()), targets['target'].shape[2:])
            assert abs(4 * ix + 2 - keypoints[b, k, 0]) <= 2 and abs(4 * iy + 2 - keypoints[b, k, 1]) <= 2

    golden = {
        'batch/image': nhwc(batch['image']),
        'batch/keypoints': keypoints,
        'batch/keypoints_frame': np.stack([a['keypoints'] for a in annotations]).astype(np.float64),
        'batch/bbox_keypoints': np.stack([np.asarray(a['bbox'], np.float64) for a in annotations]),
        'batch/bbox_transformed': np.stack([r['bbox_transformed'] for r in record]),
        'batch/bbox_crop': np.stack([r['bbox_crop'] for r in record]).astype(np.int64),
        'batch/boxes': batch['annotations']['boxes'][:, 0].numpy(),
        'batch/offsets': batch['offsets'].numpy(),
        'batch/scales': batch['scales'].numpy(),
        'targets/heatmap': nhwc(targets['target']),
        'targets/weights': nhwc(targets['weights']),
        'outputs/heatmap': nhwc(heat),
        'loss': np.array(losses, np.float32),
        'lr': np.array(lrs, np.float64),
    }
    keys = list(grads)  # Every parameter with a gradient, in named_parameters order.
    golden['leaf_keys'] = np.array(keys)
    store(golden, 'grad', grads, keys, args.full, with_index=True)
    store(golden, 'params3', params3, keys, args.full)
    golden['params0_maxabs'] = np.array([float(params0[k].abs().max()) for k in keys], np.float32)
    golden['update_maxabs'] = np.array([float((params3[k].double() - params0[k].double()).abs().max())
                                        for k in keys], np.float64)
    for key in (head + 'weight', head + 'bias'):  # The converted head (4 of 27 channels).
        golden[f'params0/{key}'] = params0[key].numpy().copy()
    golden64 = {'loss': np.float64(losses64['total_loss'].item()), 'leaf_keys': np.array(keys)}
    if args.full:  # 0.25 MB: only in the reference tier.
        golden64['outputs/heatmap'] = nhwc(outputs64['bodypart']['heatmap'])
    store(golden64, 'grad', grads64, keys, args.full)
    store(golden64, 'params3', params3_64, keys, args.full)
    golden64['loss_per_step'] = np.array(loss_per_step64, np.float64)
    # DeepLabCut's own float32 drift after the three steps, over full leaves.
    golden64['params3_32err_maxabs'] = np.array([float((params3[k].double() - params3_64[k]).abs().max())
                                                 for k in keys], np.float64)
    # DeepLabCut's own float32 error, over full leaves: the yardstick for a float32 port.
    err = [(grads[k].double() - grads64[k]).abs() for k in keys]
    golden64['grad32_err_maxabs'] = np.array([float(e.max()) for e in err], np.float64)
    golden64['grad32_err_l2'] = np.array([float(e.norm()) for e in err], np.float64)
    rel = golden64['grad32_err_l2'] / golden64['grad_l2']
    suffix = '_full' if args.full else ''
    np.savez_compressed(args.out / f'train_step_golden{suffix}.npz', **golden)
    np.savez_compressed(args.out / f'train_step_golden_float64{suffix}.npz', **golden64)

    changed = sorted(k for k in grads if not torch.equal(params0[k], params3[k]))
    info = {
        'made_by': 'tests/reference/make_train_fixtures.py',
        'entry_points': ENTRY_POINTS,
        'versions': {'deeplabcut': deeplabcut.__version__, 'torch': torch.__version__,
                     'timm': timm.__version__, 'albumentations': albumentations.__version__,
                     'numpy': np.__version__},
        'torch_threads': THREADS, 'device': 'cpu', 'dtype': 'float32', 'steps': STEPS, 'subset_seed': SEED,
        'train_settings_seed': cfg_dict['train_settings']['seed'], 'subset': None if args.full else SUBSET,
        'image_paths': image_paths, 'batch_size': len(FRAMES),
        'config_batch_size': cfg_dict['train_settings']['batch_size'],
        'conversion_array': conversion.tolist(), 'converted_bodyparts': list(weight_init.bodyparts),
        'bbox_margin': bbox_margin,
        'top_down_crop': {'size': list(loader.get_dataset_parameters().top_down_crop_size),
                          'margin': loader.get_dataset_parameters().top_down_crop_margin,
                          'crop_with_context': loader.get_dataset_parameters().top_down_crop_with_context},
        'full_image_shape_after_transform': list(record[0]['image_shape']),
        'train_transform_config': cfg_dict['data']['train'],
        'train_transform_used': train_aug,
        'train_transform': [type(t).__name__ for t in transform.transforms],
        'auto_padding_noop': all(tuple(r['image_shape'][:2]) == (480, 640) for r in record),
        'optimizer': cfg_dict['runner']['optimizer'],
        'optimizer_defaults': {k: v for k, v in runner.optimizer.defaults.items()
                               if isinstance(v, (int, float, bool, tuple, type(None)))},
        'scheduler': cfg_dict['runner']['scheduler'],
        'scheduler_class': type(runner.scheduler).__name__,
        'lr_per_step': lrs,
        'loss_per_step': losses, 'losses_per_step': all_losses,
        'loss_float64': losses64['total_loss'].item(),
        'grad32_vs_float64_rel_l2': {'median': float(np.median(rel)), 'max': float(rel.max()),
                                     'max_key': keys[int(rel.argmax())]},
        'target_generator': cfg_dict['model']['heads']['bodypart']['target_generator'],
        'heatmap_std': 2 * cfg_dict['model']['heads']['bodypart']['target_generator']['pos_dist_thresh'] / 3,
        'criterion': cfg_dict['model']['heads']['bodypart']['criterion'],
        'freeze_bn_stats': cfg_dict['model']['backbone']['freeze_bn_stats'],
        'freeze_bn_weights': cfg_dict['model']['backbone']['freeze_bn_weights'],
        'model_stride': float(model.get_stride('bodypart')),
        'no_grad_keys': no_grad,
        'unchanged_with_grad': sorted(set(grads) - set(changed)),
        'state27_sha256': state_sha256(state27),
        'state0_sha256': state_sha256({k: v.numpy() for k, v in state0.items()}),
        'params0_sha256': state_sha256({k: v.numpy() for k, v in params0.items()}),
        'normalised_sha256': hashlib.sha256(golden['batch/image'].tobytes()).hexdigest(),
        'pytorch_config_yaml': config_text,
    }
    (args.out / f'train_step_manifest{suffix}.json').write_text(
        json.dumps(info, indent=1, default=str) + '\n')
    print(json.dumps({k: info[k] for k in ('loss_per_step', 'loss_float64', 'lr_per_step', 'bbox_margin')}))


if __name__ == '__main__':
    main()
