"""A real detector fine-tuning run: the SuperAnimal detector (synthetic deterministic weights) on the
openfield project.

    .venv/bin/python benchmarks/finetune_detector_openfield.py                  # 60 steps, CPU
    .venv/bin/python benchmarks/finetune_detector_openfield.py --steps 60 --lr 1e-4 --tag lr1e-4
    .venv/bin/python benchmarks/finetune_detector_openfield.py --steps 2000 --batch-size 8   # GPU

DeepLabCut's detector recipe unchanged (AdamW lr 1e-5, batch 1, flips, affines and the resize
collate, torchvision's 800-pixel transform, frozen BatchNorm statistics), the project's 95/5
train/test split; box mAP/mAR on the 5 full-resolution test frames before and after, the loss
logged at every step.  The starting weights are the test suite's synthetic detector weights
(random convolutions with calibrated BatchNorm statistics: the released ones cannot be
downloaded here), so the run shows the training machinery on real frames and boxes, the losses
falling from a detector that finds nothing; it cannot show the accuracy of fine-tuning the
released SuperAnimal detector.  Writes the run folder (``--out``), and the plot and a JSON summary
to ``benchmarks/results/finetune_detector_openfield_<backend>[_tag].{png,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax

from superanimal_jax.checkpoints import model_dir, synthetic
from superanimal_jax.checkpoints.convert import convert_detector_state
from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT.parent / 'shared' / 'data' / 'openfield'


def synthetic_model(path: Path) -> Path:
    variables, _ = convert_detector_state(synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'detector'))
    return model_dir.write(path, {'detector': variables},
                           {'detector': {'variant': 'fasterrcnn_resnet50_fpn_v2', 'num_classes': 2}},
                           overwrite=True)


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'test.mAP@50:95' in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ('loss', 'loss_objectness', 'loss_classifier', 'loss_box_reg', 'loss_rpn_box_reg'):
        left.plot([r['step'] for r in steps], [r[key] for r in steps], label=key,
                  lw=2 if key == 'loss' else 1)
    left.set_xlabel('step')
    left.set_yscale('log')
    left.legend(fontsize=8)
    left.set_title('training losses')
    for key in ('test.mAP@50:95', 'test.mAP@50', 'test.mAR@50:95'):
        right.plot([r['step'] for r in evals], [r[key] for r in evals], 'o-', label=key)
    right.set_xlabel('step')
    right.set_title('test box metrics (x100)')
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=60)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--lr', type=float, default=1e-5)
    parser.add_argument('--out', type=Path, default=ROOT / 'out' / 'finetune_detector_openfield')
    parser.add_argument('--results', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--tag', default='')
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    model = synthetic_model(args.out / 'source')
    config = DetectorTrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                 log_interval=1, eval_interval=10_000)
    start = time.perf_counter()
    result = fine_tune_detector(PROJECT, model, args.out / 'run', config)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (args.out / 'run' / 'log.jsonl').read_text().splitlines()]
    evals = [r for r in records if 'test.mAP@50:95' in r]
    losses = [r for r in records if 'loss' in r]
    name = f"finetune_detector_openfield_{jax.default_backend()}{'_' + args.tag if args.tag else ''}"
    args.results.mkdir(parents=True, exist_ok=True)
    title = (f'detector fine-tuning on openfield, synthetic start, {args.steps} steps, '
             f'batch {args.batch_size}, lr {args.lr:g} ({jax.default_backend()}, {seconds / 60:.0f} min)')
    plot(records, args.results / f'{name}.png', title)
    first, last = losses[0], losses[-1]
    window = min(10, len(losses))
    summary = {
        'benchmark': 'finetune_detector_openfield', 'backend': jax.default_backend(),
        'device': jax.devices()[0].device_kind, 'steps': args.steps, 'batch_size': args.batch_size,
        'learning_rate': args.lr, 'minutes': seconds / 60,
        'train_frames': len(result['split'].train), 'test_frames': len(result['split'].test),
        'loss_first_step': first['loss'], 'loss_last_step': last['loss'],
        'loss_mean_first_10': sum(r['loss'] for r in losses[:window]) / window,
        'loss_mean_last_10': sum(r['loss'] for r in losses[-window:]) / window,
        'test_before': {k: v for k, v in evals[0].items() if k.startswith('test.')},
        'test_after': {k: v for k, v in evals[-1].items() if k.startswith('test.')},
        'losses': [{k: r[k] for k in ('step', 'loss', 'loss_objectness', 'loss_classifier', 'loss_box_reg',
                                      'loss_rpn_box_reg')} for r in losses],
    }
    path = args.results / f'{name}.json'
    path.write_text(json.dumps(summary, indent=1) + '\n')
    print(json.dumps({k: v for k, v in summary.items() if k != 'losses'}, indent=1))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
