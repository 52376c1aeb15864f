"""One process of a multi-device test run (``tests/test_parallel.py`` starts it as a subprocess,
since JAX's device count is fixed when JAX starts).

    python tests/parallel_worker.py train --devices 8 --model DIR --out DIR [--with-one-device]
        [--coordinator HOST:PORT --num-processes 2 --process-id 0] [--videos DIR]
    python tests/parallel_worker.py infer --devices 8 --model DIR --out DIR
    python tests/parallel_worker.py videos --devices 4 --model DIR --out DIR --videos DIR
    python tests/parallel_worker.py detector --devices 8 --out DIR
    python tests/parallel_worker.py detector_train --devices 4 --out DIR

``train`` fine-tunes a tiny test model on the vendored openfield project (batch 8; see
:func:`train_job`) and writes ``DIR/<run>-<process>.npz`` (final params, losses) and
``DIR/report-<process>.json`` (shardings seen); with ``--videos`` each process then analyses
its share of the videos there into ``DIR/videos``.  ``infer`` runs the
pose network, the top-down pipeline and video analysis on every device and on one, and writes
both results.
"""

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('job', choices=('train', 'infer', 'videos', 'detector', 'dlcrnet', 'detector_train'))
    parser.add_argument('--devices', type=int, required=True)
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--model', type=Path)
    parser.add_argument('--coordinator')
    parser.add_argument('--num-processes', type=int)
    parser.add_argument('--process-id', type=int)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--with-one-device', action='store_true')
    parser.add_argument('--videos', type=Path)
    args = parser.parse_args()
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={args.devices}'

    import jax

    jax.config.update('jax_default_matmul_precision', 'highest')
    from superanimal_jax import parallel

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    sys.path.insert(0, str(HERE))
    args.out.mkdir(parents=True, exist_ok=True)
    {'train': train_job, 'infer': infer_job, 'videos': videos_job, 'detector': detector_job,
     'dlcrnet': dlcrnet_job, 'detector_train': detector_train_job}[args.job](args)


def summary(x) -> dict:
    """What a test needs to see of an array's placement."""
    return {'spec': str(x.sharding.spec), 'devices': len(x.sharding.device_set),
            'shard_shapes': sorted({tuple(s.data.shape) for s in x.addressable_shards}),
            'dtype': str(x.dtype)}


def train_job(args) -> None:
    """Run ``main``: 3 steps over every device.  With ``--with-one-device`` (one process) also
    ``one``: the same on a single device, checkpointing every step, and ``resumed``: ``one``'s
    run restarted from its step-2 checkpoint on every device."""
    import dataclasses
    import shutil

    import jax
    import numpy as np

    import superanimal_jax
    from superanimal_jax import parallel
    from superanimal_jax.checkpoints.rules import flatten
    from superanimal_jax.training.config import TrainConfig
    from superanimal_jax.training.data import DataConfig, Item, TrainData
    from superanimal_jax.training.loop import train

    from conftest import OPENFIELD_PROJECT

    me = jax.process_index()
    config = TrainConfig(batch_size=8, steps=args.steps, eval_interval=1000, log_interval=1,
                         train_fraction=0.67, workers=1)
    runs = [('main', parallel.global_mesh(), None)]
    if args.with_one_device:
        runs += [('one', parallel.data_mesh(jax.devices()[:1]), None),
                 ('resumed', parallel.global_mesh(), 'one')]
    report = {'process_count': jax.process_count(), 'device_count': jax.device_count()}
    for name, mesh, resume_from in runs:
        out = args.out / name
        if resume_from is not None:  # The run killed after its step-2 checkpoint, on other devices.
            shutil.copytree(args.out / resume_from, out)
            shutil.rmtree(out / 'checkpoints' / str(args.steps))
        losses = []
        every_step = dataclasses.replace(config, save_interval_steps=1) if name == 'one' else config
        result = train(OPENFIELD_PROJECT, args.model, out, every_step, progress=False, mesh=mesh,
                       callbacks=[lambda step, m: losses.append(m['loss'])])
        params = flatten(jax.tree_util.tree_map(np.asarray, parallel.local_copy(result['state']['params'])))
        np.savez(args.out / f'{name}-{me}.npz', losses=np.asarray(losses), **params)
        report[name] = {'mesh': mesh.size,
                        'params': summary(jax.tree_util.tree_leaves(result['state']['params'])[0]),
                        'steps_run': len(losses)}
    # A batch as train() feeds its step: this process's rows, joined and split over the mesh.
    data = TrainData([Item('unused', np.zeros((4, 3)))], DataConfig(batch_size=8), process_index=me,
                     process_count=jax.process_count())
    report['local_batch_rows'] = data.local_batch_size
    report['batch'] = summary(parallel.global_batch(data.collate([], data.local_batch_size),
                                                    parallel.global_mesh())['image'])
    (args.out / f'report-{me}.json').write_text(json.dumps(report))
    if args.videos is not None:
        analyze_share(args, superanimal_jax.load(args.model))


def analyze_share(args, model) -> None:
    """This process's share of the synthetic videos, through ``analyze_videos``."""
    import jax

    from superanimal_jax.analysis.analyze import analyze_videos
    from superanimal_jax.inference.model import SuperAnimalModel

    import fakes

    videos = sorted(args.videos.glob('*.avi'))
    model = SuperAnimalModel(pose=model.pose, metadata=model.metadata, detector=fakes.ThresholdDetector())
    (args.out / 'videos').mkdir(exist_ok=True)
    done = analyze_videos(videos, model, args.out / 'videos', max_individuals=2, batch_size=8, progress=False)
    (args.out / f'videos-{jax.process_index()}.json').write_text(json.dumps(sorted(v.name for v in done)))


def videos_job(args) -> None:
    """This process's share of the videos (all of them, without a distributed runtime)."""
    import superanimal_jax

    analyze_share(args, superanimal_jax.load(args.model))


def detector_job(args) -> None:
    """The real detector (the suite's synthetic weights) on 8 frames, on every device and on one."""
    import jax
    import numpy as np

    from superanimal_jax import parallel
    from superanimal_jax.checkpoints import synthetic
    from superanimal_jax.checkpoints.rules import convert_state_dict
    from superanimal_jax.checkpoints.tables import detector_rules
    from superanimal_jax.inference.detector import Detector
    from superanimal_jax.models.detector import variables_shape

    import fakes

    variables = convert_state_dict(synthetic.fixture_state(HERE / 'fixtures', 'detector'), detector_rules(),
                                   variables_shape(), source='detector')[0]
    frames = np.stack([fakes.frame(i, (60, 80)) for i in range(8)])
    report, arrays = {}, {}
    for name, mesh in (('all', parallel.local_mesh()), ('one', parallel.data_mesh(jax.local_devices()[:1]))):
        found = Detector(variables, mesh=mesh).detect(frames, max_detections=10)
        report[name] = {k: summary(v) for k, v in found.items()}
        arrays.update({f'{name}/{k}': np.asarray(v) for k, v in found.items()})
    np.savez(args.out / 'detector.npz', **arrays)
    (args.out / 'detector.json').write_text(json.dumps(report))


def detector_train_job(args) -> None:
    """Detector fine-tuning (the suite's synthetic weights, small images, no resize collate) with
    batches of 4 split over every device, and on one device: final parameters and losses."""
    import jax
    import numpy as np

    from superanimal_jax import parallel
    from superanimal_jax.checkpoints import model_dir, synthetic
    from superanimal_jax.checkpoints.convert import convert_detector_state
    from superanimal_jax.checkpoints.rules import flatten
    from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector
    from superanimal_jax.transforms.detector_augment import DetectorAugmentation

    from conftest import OPENFIELD_PROJECT

    variables = convert_detector_state(synthetic.fixture_state(HERE / 'fixtures', 'detector'))[0]
    model = model_dir.write(args.out / 'source', {'detector': variables},
                            {'detector': {'variant': 'fasterrcnn_resnet50_fpn_v2', 'num_classes': 2}})
    config = DetectorTrainConfig(steps=args.steps, batch_size=4, min_size=128, max_size=171,
                                 train_fraction=1.0, workers=1, log_interval=1,
                                 augmentation=DetectorAugmentation(collate=False))
    report = {}
    for name, mesh in (('all', parallel.local_mesh()), ('one', parallel.data_mesh(jax.local_devices()[:1]))):
        result = fine_tune_detector(OPENFIELD_PROJECT, model, args.out / name, config, progress=False,
                                    mesh=mesh)
        params = {k: np.asarray(v) for k, v in flatten(jax.device_get(result['state']['params'])).items()}
        log = (args.out / name / 'log.jsonl').read_text().splitlines()
        losses = [json.loads(line)['loss'] for line in log if '"loss"' in line]
        np.savez(args.out / f'detector-{name}.npz', losses=np.array(losses), **params)
        report[name] = {'params': summary(jax.tree_util.tree_leaves(result['state']['params'])[0]),
                        'devices': mesh.size}
    report['float64'] = detector_float64_step(args, model, config)
    (args.out / 'detector_train.json').write_text(json.dumps(report))


def detector_float64_step(args, model, config) -> dict:
    """One float64 train step on the run's first batch (same step key), over every device and on
    one: losses and gradients to ``DIR/detector-float64.npz``.  In float32 the two programs' last-bit
    differences can flip a near-tie in NMS or the samplers' top-k; in float64 they cannot."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from superanimal_jax import parallel
    from superanimal_jax.checkpoints.rules import flatten
    from superanimal_jax.inference.model import load
    from superanimal_jax.io.images import read_image
    from superanimal_jax.models.detector import DetectorNetwork
    from superanimal_jax.models.detector_training import LOSSES
    from superanimal_jax.training.detector_data import DetectorData, detector_items
    from superanimal_jax.training.detector_step import make_detector_train_step
    from superanimal_jax.training.optim import make_optimizer
    from superanimal_jax.training.project import read_project, run_split
    from superanimal_jax.training.step import init_state

    from conftest import OPENFIELD_PROJECT

    project = read_project(OPENFIELD_PROJECT)
    split = run_split(args.out / 'one' / 'split.json', project, config.train_fraction, config.split_seed,
                      True)
    sizes = {f: read_image(project.image_path(f)).shape[:2] for f in split.train}
    items = detector_items(project, split.train, sizes=sizes, margin=config.bbox_margin)
    data = DetectorData(items, config, seed=config.seed)
    iterator = data.iterator(None, num_epochs=1)
    batch = next(iterator)
    iterator.close()
    data.close()
    del batch['epoch'], batch['epoch_step']
    found = {}
    with jax.enable_x64(True):
        variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                           load(model).detector.variables)
        batch = {k: np.asarray(v, np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}
        optimizer = make_optimizer(config, variables['params'], data.steps_per_epoch)
        meshes = (('all', parallel.local_mesh()), ('one', parallel.data_mesh(jax.local_devices()[:1])))
        for name, mesh in meshes:
            step = make_detector_train_step(DetectorNetwork(dtype=jnp.float64), optimizer, with_grads=True,
                                            mesh=mesh)
            state = init_state(variables['params'], optimizer, config.seed, mesh)
            stats = parallel.put_replicated(variables['batch_stats'], mesh)
            _, metrics = step(state, stats, parallel.global_batch(batch, mesh))
            metrics = jax.device_get(metrics)
            found[f'{name}/losses'] = np.array([metrics[k] for k in ('loss', *LOSSES)])
            found.update({f'{name}/grad/{k}': np.asarray(v) for k, v in flatten(metrics['grads']).items()})
    np.savez(args.out / 'detector-float64.npz', **found)
    return {'image': str(np.asarray(batch['image']).shape)}


def dlcrnet_job(args) -> None:
    """The DLCRNet (the suite's golden TF weights) on 8 small openfield frames, its batches split
    over every device and on one."""
    import jax
    import numpy as np

    from superanimal_jax import parallel
    from superanimal_jax.checkpoints import synthetic
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state
    from superanimal_jax.inference.dlcrnet import DLCRNetEstimator
    from superanimal_jax.io.video import VideoReader

    variables, config, _ = convert_dlcrnet_state(synthetic.tf_fixture_state(HERE / 'fixtures'))
    (batch,) = VideoReader(HERE / 'fixtures' / 'pipeline' / 'openfield_clip.avi').batches(8)
    frames = np.ascontiguousarray(batch.frames[:, 100:260, 200:424])  # 160x224 around the mouse.
    report, arrays = {}, {}
    for name, mesh in (('all', parallel.local_mesh()), ('one', parallel.data_mesh(jax.local_devices()[:1]))):
        model = DLCRNetEstimator(config, variables, mesh=mesh)
        report[name] = {k: summary(v) for k, v in model.peaks(frames).items()}
        arrays[name] = model.predict(frames, scales=[160], batch_size=8)
    np.savez(args.out / 'dlcrnet.npz', **arrays)
    (args.out / 'dlcrnet.json').write_text(json.dumps(report))


def infer_job(args) -> None:
    import jax
    import numpy as np

    import superanimal_jax
    from superanimal_jax import parallel
    from superanimal_jax.analysis.analyze import analyze_video
    from superanimal_jax.inference.model import SuperAnimalModel

    import fakes

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (29, 256, 256, 3), dtype=np.uint8)  # Padded to 32, the pipeline's chunk.
    frames = np.stack([fakes.frame(i) for i in range(21)])
    video = fakes.write_video(args.out / 'clip.avi', 21)
    report, arrays = {}, {}
    for name, mesh in (('all', parallel.local_mesh()), ('one', parallel.data_mesh(jax.local_devices()[:1]))):
        loaded = superanimal_jax.load(args.model, mesh=mesh)
        heatmaps = loaded.pose.heatmaps(superanimal_jax.normalize_crops(crops[:8]))
        report[name] = {'heatmaps': summary(heatmaps), 'mesh': mesh.size,
                        'params': summary(jax.tree_util.tree_leaves(loaded.pose.variables['params'])[0]),
                        }
        arrays[f'{name}/heatmaps'] = np.asarray(heatmaps.astype(np.float32))
        arrays[f'{name}/keypoints'] = np.asarray(loaded.pose.keypoints_uint8(crops))
        model = SuperAnimalModel(pose=loaded.pose, metadata=loaded.metadata,
                                 detector=fakes.ThresholdDetector())
        for k, v in model.predict(frames, max_individuals=2, batch_size=6).items():  # 21 frames: padded.
            arrays[f'{name}/predict/{k}'] = v
        (args.out / name).mkdir()
        paths = analyze_video(video, model, args.out / name, max_individuals=2, batch_size=8, progress=False)
        report[name]['h5'] = str(paths['h5'])
    np.savez(args.out / 'infer.npz', **arrays)
    (args.out / 'infer.json').write_text(json.dumps(report))


if __name__ == '__main__':
    main()
