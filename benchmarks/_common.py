"""Timing helpers shared by the benchmarks: alternate ours/theirs, medians, JSON reports."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]

def write_clip(source: Path, path: Path, frames: int) -> Path:
    """The first ``frames`` frames of the video ``source``, re-encoded by OpenCV as MJPG at ``path``."""
    import cv2

    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS)
    writer = None
    for _ in range(frames):
        frame = capture.read()[1]
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    capture.release()
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(ours, theirs, repeats: int, items: int, unit: str) -> dict:
    """Alternate ``ours()`` and ``theirs()`` (``theirs`` may be None) ``repeats`` times, after the
    callers' warm-up; both must block until their results are ready."""
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(timed(ours))
        if theirs is not None:
            theirs_s.append(timed(theirs))
    row = {f'ours_{unit}_per_s': items / statistics.median(ours_s), 'ours_times_s': ours_s}
    if theirs_s:
        row[f'deeplabcut_{unit}_per_s'] = items / statistics.median(theirs_s)
        row['deeplabcut_times_s'] = theirs_s
        row['ratio'] = row[f'ours_{unit}_per_s'] / row[f'deeplabcut_{unit}_per_s']
    return row


def in_turn(calls: dict, repeats: int, items: int, unit: str) -> dict:
    """Each of ``calls`` (name -> a call that blocks until its results are ready; None: skipped)
    taken in turn ``repeats`` times, after the callers' warm-up: per name, ``<name>_<unit>_per_s``
    (from the median) and ``<name>_times_s``."""
    calls = {name: call for name, call in calls.items() if call is not None}
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call))
    row = {}
    for name, seconds in times.items():
        row[f'{name}_{unit}_per_s'] = items / statistics.median(seconds)
        row[f'{name}_times_s'] = seconds
    return row


def describe(row: dict, unit: str) -> str:
    text = f"ours {row[f'ours_{unit}_per_s']:.2f} {unit}/s"
    if 'ratio' in row:
        text += f", DeepLabCut {row[f'deeplabcut_{unit}_per_s']:.2f} {unit}/s, ratio {row['ratio']:.2f}"
    return text


def write_report(name: str, results: list, out: Path, tag: str = '') -> Path:
    backend = jax.default_backend()
    report = {'benchmark': name, 'backend': backend, 'device': jax.devices()[0].device_kind,
              'cpu_count': os.cpu_count(), 'machine': platform.machine(), 'jax': jax.__version__,
              'xla_flags': os.environ.get('XLA_FLAGS', ''), 'results': results}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{backend}{'_' + tag if tag else ''}.json"
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {path}')
    return path


class ReferenceWorker:
    """A benchmark's DeepLabCut side in its own environment (``.ref`` or ``.ref-tf``): the script
    prints ``{"setup_s": ...}`` once, then answers each request line with one JSON line (its
    timing); only one side runs at a time."""

    def __init__(self, env: str, script: str, *args: str):
        python = ROOT / env / 'bin' / 'python'
        if not python.exists():
            raise SystemExit(f'no {env}/: see ../shared/reference/README.md (and tensorflow/README.md)')
        self.process = subprocess.Popen([str(python), str(ROOT / 'benchmarks' / script), *map(str, args)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=ROOT / 'tests' / 'reference')
        self.setup_s = self._answer()['setup_s']

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith('{'):
                return json.loads(line)
        raise RuntimeError(f'the reference worker {self.process.args[1]} stopped')

    def ask(self, request: str) -> dict:
        """Send one request line and return the worker's answer."""
        self.process.stdin.write(request + '\n')
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
