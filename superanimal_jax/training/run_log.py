"""A run's records: ``log.jsonl`` (every logged step and evaluation) and ``run.json`` (its settings)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from superanimal_jax.training.config import TrainConfig


class RunLog:
    """``log.jsonl``: one JSON object per logged step / evaluation; on resume, truncated to the
    checkpoint's step so that the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int, *, write: bool = True):
        self.path, self.enabled = path, write
        if not write:  # Another process writes the log.
            return
        kept = []
        if path.exists() and resume_step > 0:
            kept = [line for line in path.read_text().splitlines()
                    if (record := _parse(line)) is not None and record['step'] <= resume_step]
        path.write_text(''.join(line + '\n' for line in kept))

    def write(self, record: dict) -> None:
        """Append ``record`` as one JSON line (nothing on a process that does not write the log)."""
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def records(self) -> list[dict]:
        """Every record in the file, in order; torn lines are dropped."""
        return [r for line in self.path.read_text().splitlines() if (r := _parse(line)) is not None]


def _parse(line: str) -> dict | None:
    try:  # A line torn by a kill or a full disk is dropped.
        return json.loads(line)
    except json.JSONDecodeError:
        return None


RUN_KEYS = ('mode', 'batch_size', 'seed', 'split_seed', 'train_fraction', 'bbox_margin', 'augmentation',
            'learning_rate', 'weight_decay', 'milestones', 'milestone_lrs', 'frozen', 'replay_threshold',
            'replay_iou', 'compute_dtype')


def check_run(out: Path, config: TrainConfig, model, items: int, keys: tuple[str, ...] = RUN_KEYS) -> None:
    """``OUT/run.json`` records what a run's checkpoints depend on (``keys`` of ``config``);
    resuming with other settings would silently mix two experiments, so it is refused."""
    record = {'source_model': str(Path(model).absolute()), 'items': items,
              **json.loads(json.dumps({k: dataclasses.asdict(config)[k] for k in keys}))}
    path = out / 'run.json'
    if path.exists():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in record.items() if previous.get(k) != v}
        if changed:
            details = ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())
            raise ValueError(f'{out} holds a run made with other settings ({details}); resume it with '
                             f'the same settings (only --steps/--epochs may grow) or use another --out')
    else:
        path.write_text(json.dumps(record, indent=1) + '\n')
