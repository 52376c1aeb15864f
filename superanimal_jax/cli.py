"""``superanimal-jax`` command line: thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _convert(args) -> int:
    from superanimal_jax.checkpoints.convert import convert

    out = convert(pose=args.pose, detector=args.detector, dlcrnet=args.dlcrnet, out=args.out,
                  overwrite=args.overwrite)
    meta = json.loads((out / 'metadata.json').read_text())
    for network in ('pose', 'detector', 'dlcrnet'):
        if network in meta:
            src = meta[network]['source']
            skipped = ''.join(f", {i['count']} ignored ({i['reason']})" for i in src['ignored'])
            print(f"{network}: {src['file']} [{src['format']}] -> {src['loaded']} tensors loaded{skipped}")
    print(f'wrote {out}')
    return 0


VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.mpg', '.mpeg', '.m4v', '.wmv', '.webm')


def _model_dir(args):
    """--model DIR, else --weights POSE DETECTOR converted once, else the model hub (cached)."""
    if args.model:
        return args.model
    from superanimal_jax.checkpoints import hub

    if args.weights:
        return hub.ensure_model(pose=args.weights[0], detector=args.weights[1])
    return hub.ensure_model()


def _download(args) -> int:
    from superanimal_jax.checkpoints import hub

    if args.weights:
        path = hub.ensure_model(pose=args.weights[0], detector=args.weights[1], force=args.force)
    else:
        path = hub.ensure_model(force=args.force)
    print(path)
    return 0


def _distributed(args) -> None:
    """Start JAX's distributed runtime from --coordinator/--num-processes/--process-id (or the
    SUPERANIMAL_JAX_* environment), before any other JAX call."""
    from superanimal_jax import parallel

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)


def _analyze(args) -> int:
    from pathlib import Path

    import jax

    import superanimal_jax
    from superanimal_jax.analysis.analyze import analyze_images, analyze_videos
    from superanimal_jax.io.images import IMAGE_SUFFIXES

    inputs = [Path(p) for p in args.inputs]
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f'{p}: no such file or folder')
        if p.is_file() and p.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            raise ValueError(f'{p}: not a video ({", ".join(VIDEO_SUFFIXES)}) or an image '
                             f'({", ".join(IMAGE_SUFFIXES)})')
    if args.out is not None:
        from superanimal_jax.io.results import output_folder

        output_folder(args.out)  # Made before the model loads; a file in the way fails here.
    _distributed(args)
    videos = [p for p in inputs if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in inputs if p not in videos]
    if args.video_adapt:
        return _video_adapt(args, videos, images)
    model = superanimal_jax.load(_model_dir(args), dtype=args.dtype, precision=args.precision)
    network = model.network(args.network)
    if images and network == 'dlcrnet':
        raise ValueError('the DLCRNet analyses videos (DeepLabCut\'s SuperAnimal TF path is video-only); '
                         f'not images: {", ".join(map(str, images[:3]))}')
    if args.scales is not None and network != 'dlcrnet':
        raise ValueError('--scales applies to the DLCRNet (--network dlcrnet) only')
    options = dict(max_individuals=args.max_individuals, batch_size=args.batch_size, pcutoff=args.pcutoff)
    # With several processes each analyses its share of the videos; process 0 the images.
    done = analyze_videos(videos, model, args.out, labeled_video=args.labeled_video, csv=args.csv,
                          plot_trajectories=args.plot_trajectories, start=args.start, stop=args.stop,
                          network=network, scales=args.scales, **options)
    for paths in done.values():
        for path in paths.values():
            print(f'wrote {path}')
    if images and jax.process_index() == 0:
        out = args.out or (images[0] if images[0].is_dir() else images[0].parent)
        results = analyze_images(images, model, out, labeled=args.labeled_video, **options)
        print(f'analysed {len(results)} images, results in {out}')
    return 0


def _video_adapt(args, videos, images) -> int:
    from superanimal_jax.adaptation.adapt import AdaptConfig, adapt_video

    if images:
        raise ValueError(f'--video-adapt adapts to videos, not images: {", ".join(map(str, images[:3]))}')
    if args.network == 'dlcrnet' or args.scales is not None or args.start or args.stop is not None:
        raise ValueError('--video-adapt runs the top-down model on whole videos: no --network dlcrnet, '
                         '--scales, --start or --stop')
    if args.dtype != 'float32' or args.precision not in (None, 'highest'):
        raise ValueError("--video-adapt trains and predicts in float32 at the highest precision, as "
                         'DeepLabCut does: no --dtype bfloat16 or --precision')
    config = AdaptConfig(pseudo_threshold=args.pseudo_threshold, bbox_threshold=args.bbox_threshold,
                         detector_epochs=args.detector_epochs, pose_epochs=args.pose_epochs,
                         batch_size=args.adapt_batch_size)
    model = _model_dir(args)
    for video in videos:
        result = adapt_video(video, model, args.out, config, max_individuals=args.max_individuals,
                             batch_size=args.batch_size, pcutoff=args.pcutoff,
                             labeled_video=args.labeled_video, csv=args.csv)
        for stage in ('before', 'after'):
            for path in result[stage].values():
                print(f'wrote {path}')
        print(f'adapted model: {result["model"]}')
    return 0


def _train(args) -> int:
    from superanimal_jax.training.config import TrainConfig
    from superanimal_jax.training.loop import train
    from superanimal_jax.transforms.augment import TrainAugmentation

    _distributed(args)
    options = dict(mode=args.mode, batch_size=args.batch_size, seed=args.seed, workers=args.workers,
                   train_fraction=args.train_fraction, compute_dtype=args.dtype)
    if args.epochs is not None:
        options['epochs'] = args.epochs
    if args.steps is not None:
        options['steps'] = args.steps
    if args.lr is not None:
        options['learning_rate'] = args.lr
    if args.eval_interval is not None:
        options['eval_interval'] = args.eval_interval
    if args.save_interval is not None:
        options['save_interval'] = args.save_interval
    if args.no_augmentation:
        options['augmentation'] = TrainAugmentation.off()
    from superanimal_jax.training.project import read_project

    if args.detector_epochs < 0 or (args.epochs is not None and args.epochs < 0):
        raise ValueError('--detector-epochs and --pose-epochs must be >= 0')
    if args.epochs == 0 and not args.detector_epochs:
        raise ValueError('--pose-epochs 0 trains nothing: give --detector-epochs N as well')
    project = read_project(args.project, drop_unlabeled=args.drop_unlabeled)
    model = args.model
    if args.detector_epochs:  # DeepLabCut's train_network: the detector first, then the pose model.
        model = _train_detector(args, project)
    if args.epochs == 0:
        import shutil

        final = Path(args.out) / 'model'
        staging = final.with_name('.model.partial')
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model, staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        print(f'model: {final}')
        return 0
    result = train(project, model, args.out, TrainConfig(**options))
    _report(result)
    return 0


def _train_detector(args, project) -> Path:
    """``train --detector-epochs N``: the detector fine-tuned into ``OUT/detector``; returns its
    model directory (the source model with the new detector)."""
    from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector
    from superanimal_jax.transforms.detector_augment import DetectorAugmentation

    options = dict(epochs=args.detector_epochs, batch_size=args.detector_batch_size, seed=args.seed,
                   workers=args.workers, train_fraction=args.train_fraction)
    if args.detector_lr is not None:
        options['learning_rate'] = args.detector_lr
    if args.eval_interval is not None:
        options['eval_interval'] = args.eval_interval
    if args.save_interval is not None:
        options['save_interval'] = args.save_interval
    if args.no_augmentation:
        options['augmentation'] = DetectorAugmentation.off()
    result = fine_tune_detector(project, args.model, Path(args.out) / 'detector',
                                DetectorTrainConfig(**options))
    _report(result)
    return result['paths']['model']


def _report(result: dict) -> None:
    for name, value in result['metrics'].items():
        if '.' in name:
            print(f'{name}: {value:.4g}')
    for name, path in result['paths'].items():
        print(f'{name}: {path}')


def _evaluate(args) -> int:
    from superanimal_jax.training.evaluation import evaluate
    from superanimal_jax.training.project import read_project

    project = read_project(args.project, drop_unlabeled=args.drop_unlabeled)
    results = evaluate(project, args.model, split=args.split, pcutoff=args.pcutoff)
    print(json.dumps(results, indent=1))
    return 0


def _add_scaling_options(command, *, precision: bool = True) -> None:
    group = command.add_argument_group('devices and hosts (see README, "Scaling out" and "Performance")')
    group.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                       help='compute dtype (weights and BatchNorm statistics stay float32; default float32)')
    if precision:
        group.add_argument('--precision', choices=('highest', 'high', 'default'),
                           help='matmul/convolution precision: highest (the default for float32: '
                           "DeepLabCut's float32 results on any backend) or the backend's faster default "
                           '(TF32 on recent NVIDIA GPUs, bfloat16 passes on TPUs; the default for bfloat16)')
    group.add_argument('--compilation-cache', metavar='DIR|off',
                       help='folder keeping compiled programs between runs, or off (default: '
                       '$SUPERANIMAL_JAX_CACHE, else ~/.cache/superanimal-jax/jax)')
    group.add_argument('--coordinator', metavar='HOST:PORT',
                       help="multi-host: process 0's address, on every host ('auto': JAX's cluster detection "
                       'on Cloud TPU, SLURM, Open MPI); or SUPERANIMAL_JAX_COORDINATOR')
    group.add_argument('--num-processes', type=int, metavar='N', help='multi-host: number of processes '
                       '(or SUPERANIMAL_JAX_NUM_PROCESSES)')
    group.add_argument('--process-id', type=int, metavar='I', help="multi-host: this process's index, 0..N-1 "
                       '(or SUPERANIMAL_JAX_PROCESS_ID)')


def _convert_command(commands) -> None:
    """``convert``: released PyTorch files -> a model directory."""
    convert = commands.add_parser('convert', help='convert released PyTorch weights to a model directory')
    convert.add_argument('--pose', metavar='SRC', help='pose_model.pth, '
                         'superanimal_topviewmouse_hrnet_w32.pt or a bare state dict')
    convert.add_argument('--detector', metavar='SRC', help='detector.pt, superanimal_topviewmouse_fasterrcnn_'
                         'resnet50_fpn_v2.pt or a bare state dict')
    convert.add_argument('--dlcrnet', metavar='SRC', help='DLC_ma_supertopview5k_resnet_50_iteration-0_'
                         'shuffle-1.tar.gz (the TensorFlow release) or a snapshot-N.index')
    convert.add_argument('--out', metavar='DIR', required=True, help='model directory to write')
    convert.add_argument('--overwrite', action='store_true', help='replace DIR if it exists')
    convert.set_defaults(run=_convert)


def _analyze_command(commands) -> None:
    """``analyze``: videos, images or folders of images -> DeepLabCut's result files."""
    analyze = commands.add_parser('analyze',
                                  help='SuperAnimal poses for videos, images or folders of images')
    analyze.add_argument('inputs', nargs='+', metavar='INPUT',
                         help='video files, image files or folders of images')
    analyze.add_argument('--model', metavar='DIR', help='converted model directory (default: download the '
                         'released weights once and cache them; see `download`)')
    analyze.add_argument('--weights', nargs=2, metavar=('POSE', 'DETECTOR'),
                         help='released PyTorch files to convert (once, cached) instead of downloading')
    analyze.add_argument('--out', metavar='DIR',
                         help="output folder, made if missing (default: each input's folder)")
    analyze.add_argument('--max-individuals', type=int, default=10, metavar='N')
    analyze.add_argument('--batch-size', type=int, default=8, metavar='N',
                         help='frames per batch (default 8)')
    analyze.add_argument('--pcutoff', type=float, default=0.1, metavar='P',
                         help='likelihood above which keypoints are drawn (default 0.1)')
    analyze.add_argument('--labeled-video', action='store_true', help='also write a labeled video / images')
    analyze.add_argument('--csv', action='store_true', help='also write the results as .csv')
    analyze.add_argument('--plot-trajectories', action='store_true',
                         help='also write a trajectory plot (PNG)')
    analyze.add_argument('--network', choices=('topdown', 'dlcrnet'),
                         help='which pipeline runs (default: top-down when the model directory holds pose '
                         'and detector, else the DLCRNet)')
    analyze.add_argument('--scales', type=int, nargs='+', metavar='HEIGHT',
                         help='DLCRNet: frame heights to run at and merge (default: H-50 H H+50)')
    analyze.add_argument('--start', type=int, default=0, metavar='FRAME', help='first frame to analyse')
    analyze.add_argument('--stop', type=int, metavar='FRAME', help='analyse up to this frame (exclusive)')
    adapt = analyze.add_argument_group('video adaptation (DeepLabCut\'s video_adapt=True)')
    adapt.add_argument('--video-adapt', action='store_true',
                       help='adapt the detector and then the pose model to each video on its own confident '
                       'predictions, then analyse it again (_after_adapt files)')
    adapt.add_argument('--pseudo-threshold', type=float, default=0.1, metavar='P',
                       help='keypoints scoring below become (0, 0) in the pseudo-labels (default 0.1)')
    adapt.add_argument('--bbox-threshold', type=float, default=0.9, metavar='P',
                       help='individuals whose box scores below are left out (default 0.9)')
    adapt.add_argument('--detector-epochs', type=int, default=4, metavar='N', help='default 4')
    adapt.add_argument('--pose-epochs', type=int, default=4, metavar='N', help='default 4')
    adapt.add_argument('--adapt-batch-size', type=int, default=8, metavar='N', help='default 8')
    _add_scaling_options(analyze)
    analyze.set_defaults(run=_analyze)


def _download_command(commands) -> None:
    """``download``: fetch, convert and cache the released weights."""
    download = commands.add_parser('download', help='fetch the released weights from the DeepLabCut '
                                   'model hub, convert and cache them; prints the model directory')
    download.add_argument('--weights', nargs=2, metavar=('POSE', 'DETECTOR'),
                          help='convert these local files instead (no network)')
    download.add_argument('--force', action='store_true', help='convert again even if cached')
    download.set_defaults(run=_download)


def _train_command(commands) -> None:
    """``train``: fine-tune the detector and/or the pose model on a DeepLabCut project."""
    fit = commands.add_parser('train', help='fine-tune the pose model (and with --detector-epochs the '
                              'detector first) on a DeepLabCut project (DeepLabCut\'s SuperAnimal recipe)')
    fit.add_argument('--project', metavar='DIR', required=True,
                     help='DeepLabCut project (config.yaml, labeled-data/)')
    fit.add_argument('--model', metavar='DIR', required=True, help='converted SuperAnimal model directory')
    fit.add_argument('--out', metavar='DIR', required=True, help='run folder (resumed if it has checkpoints)')
    fit.add_argument('--mode', choices=('convert', 'replay', 'transfer'), default='convert',
                     help='convert: head sliced by the conversion table (default); replay: all 27 keypoints, '
                     'unlabelled ones from the model; transfer: a new head for the project bodyparts')
    length = fit.add_mutually_exclusive_group()
    length.add_argument('--epochs', '--pose-epochs', dest='epochs', type=int, metavar='N',
                        help='pose-model epochs (default 200; 0 with --detector-epochs: the detector only)')
    length.add_argument('--steps', type=int, metavar='N', help='optimiser steps instead of epochs')
    fit.add_argument('--batch-size', type=int, default=1, metavar='N', help='default 1, as DeepLabCut')
    fit.add_argument('--detector-epochs', type=int, default=0, metavar='N',
                     help='fine-tune the detector first, for N epochs (default 0: the pose model only); '
                     'it goes into the output model directory')
    fit.add_argument('--detector-batch-size', type=int, default=1, metavar='N',
                     help='default 1, as DeepLabCut')
    fit.add_argument('--detector-lr', type=float, metavar='LR',
                     help='detector learning rate (default 1e-5, 1e-6 from epoch 90)')
    fit.add_argument('--lr', type=float, metavar='LR', help='base learning rate (default 1e-5)')
    fit.add_argument('--eval-interval', type=int, metavar='EPOCHS',
                     help='evaluate every N epochs (default 10)')
    fit.add_argument('--save-interval', type=int, metavar='EPOCHS',
                     help='checkpoint every N epochs (default 25)')
    fit.add_argument('--train-fraction', type=float, metavar='F',
                     help="fraction of labelled frames to train on (default: the project's TrainingFraction)")
    fit.add_argument('--no-augmentation', action='store_true',
                     help='no augmentation (pose: rotation, noise; detector: flip, affine, resize collate)')
    fit.add_argument('--drop-unlabeled', action='store_true', help='leave out frames without any label')
    fit.add_argument('--seed', type=int, default=42)
    fit.add_argument('--workers', type=int, default=2, metavar='N', help='host threads preparing batches')
    _add_scaling_options(fit, precision=False)
    fit.set_defaults(run=_train)


def _evaluate_command(commands) -> None:
    """``evaluate``: DeepLabCut's RMSE and mAP of a model on a project."""
    assess = commands.add_parser('evaluate',
                                 help="DeepLabCut's RMSE and mAP of a model on a project's labels")
    assess.add_argument('--project', metavar='DIR', required=True)
    assess.add_argument('--model', metavar='DIR', required=True)
    assess.add_argument('--split', metavar='JSON', help="a run's split.json: report train and test apart")
    assess.add_argument('--pcutoff', type=float, metavar='P', help="default: the project's pcutoff")
    assess.add_argument('--drop-unlabeled', action='store_true', help='leave out frames without any label')
    assess.set_defaults(run=_evaluate)


def main(argv: list[str] | None = None) -> int:
    """Run one ``superanimal-jax`` subcommand; returns the exit status (2: bad input, 130: interrupted)."""
    parser = argparse.ArgumentParser(prog='superanimal-jax', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    for add in (_convert_command, _analyze_command, _download_command, _train_command, _evaluate_command):
        add(commands)
    args = parser.parse_args(argv)
    if args.command == 'convert' and not (args.pose or args.detector or args.dlcrnet):
        parser.error('convert needs --pose, --detector and/or --dlcrnet')
    try:
        if getattr(args, 'compilation_cache', None):
            from superanimal_jax import compilation

            compilation.use_compilation_cache(args.compilation_cache)
        return args.run(args)
    except KeyboardInterrupt:
        if args.command == 'train':
            print(f'superanimal-jax train: interrupted; rerun the same command to resume from the last '
                  f'checkpoint in {args.out}', file=sys.stderr)
        else:
            print(f'superanimal-jax {args.command}: interrupted; no partial results were kept',
                  file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f'superanimal-jax {args.command}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
