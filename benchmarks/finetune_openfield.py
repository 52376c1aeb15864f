"""A real fine-tuning run: SuperAnimal (synthetic deterministic weights) on the openfield project.

    .venv/bin/python benchmarks/finetune_openfield.py   # 300 steps, about 20 min on 2 CPU cores
    .venv/bin/python benchmarks/finetune_openfield.py --steps 300 --lr 1e-4 --out out/ft_lr1e-4
    .venv/bin/python benchmarks/finetune_openfield.py --steps 2000 --batch-size 8   # on a GPU

Conversion-table mode (snout, leftear, rightear, tailbase -> nose, left_ear, right_ear,
tail_base), DeepLabCut's SuperAnimal recipe unchanged (AdamW lr 1e-5, batch 1, rotation and
noise augmentation, frozen BatchNorm statistics), the project's 95/5 train/test split, evaluated
every epoch.  The starting weights are the test suite's synthetic SuperAnimal weights converted
in memory (the released ones cannot be downloaded here), so the run shows the loss falling and
the keypoint error shrinking from a model that starts far off, not the accuracy of the real
SuperAnimal model.  Writes the run folder (``--out``), and the plot and a JSON summary to
``benchmarks/results/finetune_openfield_<backend>.{png,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax

from superanimal_jax.checkpoints import model_dir, synthetic
from superanimal_jax.checkpoints.convert import convert_pose_state
from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT.parent / 'shared' / 'data' / 'openfield'


def synthetic_model(path: Path) -> Path:
    state = synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'pose')
    variables, _ = convert_pose_state(state)
    return model_dir.write(path, {'pose': variables}, {'pose': {
        'variant': 'hrnet_w32', 'num_keypoints': 27, 'stride': 4, 'keypoints': list(TOPVIEWMOUSE_KEYPOINTS),
        'source': {'file': 'synthetic (tests/fixtures/pose_manifest.json)'}}}, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--lr', type=float, default=1e-5, help="base learning rate (DeepLabCut's: 1e-5)")
    parser.add_argument('--out', type=Path, default=ROOT / 'out' / 'finetune_openfield')
    parser.add_argument('--fresh', action='store_true', help='delete --out first instead of resuming')
    args = parser.parse_args()
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    model = synthetic_model(args.out.parent / 'synthetic_superanimal')
    result = train(PROJECT, model, args.out, TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                                         learning_rate=args.lr, eval_interval=1,
                                                         save_interval=1, log_interval=5))
    records = [json.loads(line) for line in (args.out / 'log.jsonl').read_text().splitlines()]
    losses = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'test.rmse' in r]
    results = ROOT / 'benchmarks' / 'results'
    name = f'finetune_openfield_{jax.default_backend()}' + ('' if args.lr == 1e-5 else f'_lr{args.lr:g}')
    shutil.copy(result['paths']['plot'], results / f'{name}.png')
    summary = {'benchmark': 'finetune_openfield', 'backend': jax.default_backend(), 'steps': args.steps,
               'batch_size': args.batch_size, 'learning_rate': args.lr,
               'first_losses': [r['loss'] for r in losses[:5]],
               'last_losses': [r['loss'] for r in losses[-5:]], 'evaluations': evals}
    (results / f'{name}.json').write_text(json.dumps(summary, indent=1) + '\n')
    print(json.dumps(summary['evaluations'], indent=1))


if __name__ == '__main__':
    main()
