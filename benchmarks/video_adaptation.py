"""A whole video adaptation, ours vs DeepLabCut's, on the same openfield clip and CPU, in one run:
wall time, peak memory (RSS) and peak disk use, and what each adaptation did to the keypoints.

    .venv/bin/python benchmarks/video_adaptation.py                 # 30 frames, DeepLabCut's defaults
    .venv/bin/python benchmarks/video_adaptation.py --frames 10 --detector-epochs 1 --pose-epochs 1

Each side is one fresh process, started the way a user starts it, on its own copy of the clip:
``superanimal-jax analyze CLIP --video-adapt --labeled-video`` and DeepLabCut's
``video_inference_superanimal(video_adapt=True)`` (``_adaptation_dlc_worker.py`` in ``.ref``),
both with the synthetic weights (ours converted beforehand, not timed).  Settings: DeepLabCut's
defaults (4 + 4 epochs, batch 8, pseudo-threshold 0.1) except ``--bbox-threshold 0.6`` (the
synthetic detector scores its boxes 0.63-0.73: at 0.9 nothing would be adapted) and at most 3
individuals.  Peak RSS is the process's own (``wait4``); peak disk is the folder's size sampled
every 0.2 s, minus the clip.  Ours includes its XLA compilations (no persistent cache yet).

Afterwards, from each side's h5 files: the results' names and layouts, and for the first
individual (the best-scoring box; neither side tracks identities) the mean keypoint change
before -> after and the frame-to-frame jitter before and after (mean displacement of a keypoint
between consecutive frames where it scores >= pcutoff in both: the measure of Ye et al. 2024).
With synthetic weights these say only that adaptation ran and moved the predictions; they say
nothing about whether it helps on a real mouse.  Writes ``benchmarks/results/video_adaptation_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from _common import write_clip, write_report  # noqa: E402

VIDEO = ROOT.parent / 'shared' / 'data' / 'openfield' / 'videos' / 'm3v1mp4.mp4'
FIXTURES = ROOT / 'tests' / 'fixtures'
MAX_INDIVIDUALS, BBOX_THRESHOLD, PCUTOFF = 3, 0.6, 0.1


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # Written and removed between the listing and the stat.
                pass
    return total


def measured(command: list[str], folder: Path, log: Path) -> dict:
    """Run ``command`` to completion: wall seconds, its peak RSS, the folder's peak growth."""
    start_bytes = folder_bytes(folder)
    peak = [start_bytes]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], folder_bytes(folder))

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    with open(log, 'w') as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], folder_bytes(folder))
    code = os.waitstatus_to_exitcode(status)
    failed = {'exit_code': code, 'log_tail': log.read_text()[-1500:]} if code else {}
    if failed:
        print(f'{command[0]} failed (exit {code}): its figures are up to the failure; log tail:\n'
              + failed['log_tail'], flush=True)
    return {**failed, 'seconds': seconds, 'peak_rss_mib': usage.ru_maxrss / 1024,
            'peak_disk_mib': (peak[0] - start_bytes) / 2 ** 20,
            'final_disk_mib': (folder_bytes(folder) - start_bytes) / 2 ** 20}


def keypoints(h5: Path) -> tuple[np.ndarray, object]:
    """``(frames, individuals, keypoints, 3)`` and the table's columns."""
    import pandas as pd

    table = pd.read_hdf(h5)
    levels = table.columns.names
    individuals = table.columns.get_level_values('individuals').unique() if 'individuals' in levels else [0]
    values = table.to_numpy(np.float64).reshape(len(table), len(individuals), -1, 3)
    return values, table


def jitter(values: np.ndarray) -> float:
    """Mean displacement of individual 0's keypoints between consecutive frames, where both score
    >= PCUTOFF."""
    first = values[:, 0]
    ok = (first[1:, :, 2] >= PCUTOFF) & (first[:-1, :, 2] >= PCUTOFF)
    step = np.linalg.norm(first[1:, :, :2] - first[:-1, :, :2], axis=-1)
    return float(step[ok].mean()) if ok.any() else float('nan')


def outcome(folder: Path) -> dict:
    """Names and layouts of the results in ``folder``, and what adaptation did to the keypoints."""
    results = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != 'clip.avi')
    before_h5 = next(folder / n for n in results if n.endswith('_fasterrcnn_resnet50_fpn_v2.h5')
                     and 'snapshot' not in n)
    after_h5 = next(folder / n for n in results if n.endswith('.h5') and 'snapshot' in n)
    before, before_table = keypoints(before_h5)
    after, after_table = keypoints(after_h5)
    both = (before[:, 0, :, 2] >= PCUTOFF) & (after[:, 0, :, 2] >= PCUTOFF)
    change = np.linalg.norm(after[:, 0, :, :2] - before[:, 0, :, :2], axis=-1)
    after_json = json.loads(next(folder / n for n in results if n.endswith('_after_adapt.json')).read_text())
    return {
        'results': results,
        'pseudo_folder': sorted(p.name for p in (folder / 'pseudo_clip').iterdir()),
        'h5_columns': [list(map(str, c)) for c in after_table.columns[:3]]
        + [list(after_table.columns.names)],
        'h5_shape': list(after_table.shape), 'h5_index': [str(i) for i in after_table.index[:2]],
        'same_columns_before_after': bool(before_table.columns.equals(after_table.columns)),
        'json_frame_keys': sorted(after_json[0]) if isinstance(after_json, list) else sorted(after_json),
        'keypoint_change_px': float(change[both].mean()) if both.any() else float('nan'),
        'keypoints_compared': int(both.sum()),
        'jitter_before_px': jitter(before), 'jitter_after_px': jitter(after),
        'confident_before': float((before[:, 0, :, 2] >= PCUTOFF).mean()),
        'confident_after': float((after[:, 0, :, 2] >= PCUTOFF).mean()),
        '_tables': (before_table, after_table),
    }


def main() -> None:
    import superanimal_jax
    from superanimal_jax.checkpoints import synthetic

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=30)
    parser.add_argument('--detector-epochs', type=int, default=4)
    parser.add_argument('--pose-epochs', type=int, default=4)
    parser.add_argument('--skip-deeplabcut', action='store_true')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--keep', type=Path, help='copy each side\'s result files (not its pseudo_clip) here')
    args = parser.parse_args()
    reference = ROOT / '.ref' / 'bin' / 'python'
    if not args.skip_deeplabcut and not reference.exists():
        raise SystemExit('no .ref/: see ../shared/reference/README.md, or pass --skip-deeplabcut')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / 'weights'
        pose = synthetic.write_pose_checkpoints(synthetic.fixture_state(FIXTURES, 'pose'), weights)['dlc3']
        detector = synthetic.write_detector_checkpoints(synthetic.fixture_state(FIXTURES, 'detector'),
                                                        weights)['dlc3']
        model = superanimal_jax.convert(pose=pose, detector=detector, out=tmp / 'model')
        clip = write_clip(VIDEO, tmp / 'clip.avi', args.frames)
        # Absolute video paths: given 'clip.avi', DeepLabCut's adaptation looks for its frames under
        # pseudo_clip/images/pseudo_clip/images/ and stops with "num_samples=0".
        sides = {'ours': [str(ROOT / '.venv' / 'bin' / 'superanimal-jax'), 'analyze',
                          str(tmp / 'ours' / 'clip.avi'), '--video-adapt', '--model', str(model),
                          '--max-individuals', str(MAX_INDIVIDUALS),
                          '--bbox-threshold', str(BBOX_THRESHOLD), '--pcutoff', str(PCUTOFF),
                          '--labeled-video', '--detector-epochs', str(args.detector_epochs),
                          '--pose-epochs', str(args.pose_epochs)]}
        if not args.skip_deeplabcut:
            settings = {'max_individuals': MAX_INDIVIDUALS, 'bbox_threshold': BBOX_THRESHOLD,
                        'pcutoff': PCUTOFF, 'create_labeled_video': True,
                        'detector_epochs': args.detector_epochs, 'pose_epochs': args.pose_epochs}
            sides['deeplabcut'] = [str(reference), str(ROOT / 'benchmarks' / '_adaptation_dlc_worker.py'),
                                   str(tmp / 'deeplabcut' / 'clip.avi'), str(pose), str(detector),
                                   json.dumps(settings)]
        row = {'frames': args.frames, 'frame_size': [480, 640], 'max_individuals': MAX_INDIVIDUALS,
               'bbox_threshold': BBOX_THRESHOLD, 'pcutoff': PCUTOFF, 'detector_epochs': args.detector_epochs,
               'pose_epochs': args.pose_epochs}
        outcomes = {}
        for name, command in sides.items():
            folder = tmp / name
            folder.mkdir()
            shutil.copy(clip, folder / 'clip.avi')
            print(f'{name}: adapting ({" ".join(command[:3])} ...)', flush=True)
            row[name] = measured(command, folder, tmp / f'{name}.log')
            if args.keep:
                shutil.copytree(folder, args.keep / name, ignore=shutil.ignore_patterns('pseudo_*'),
                                dirs_exist_ok=True)
            try:
                if 'exit_code' in row[name]:
                    raise RuntimeError(f"exit code {row[name]['exit_code']}")
                outcomes[name] = outcome(folder)
            except Exception as error:  # Keep the measurements; say what could not be read.
                outcomes[name] = {'error': repr(error), 'files': sorted(p.name for p in folder.iterdir()),
                                  '_tables': None}
            print(f"{name}: {row[name]['seconds']:.0f} s, peak RSS {row[name]['peak_rss_mib']:.0f} MiB, "
                  f"peak disk {row[name]['peak_disk_mib']:.1f} MiB", flush=True)
        for name, found in outcomes.items():
            found.pop('_tables')
            row[name].update(found)
        if 'deeplabcut' in outcomes and not any('error' in o for o in outcomes.values()):
            ours, theirs = outcomes['ours'], outcomes['deeplabcut']
            row['same_result_names'] = ours['results'] == theirs['results']
            row['same_h5_layout'] = all(ours[k] == theirs[k] for k in ('h5_columns', 'h5_shape', 'h5_index'))
            row['same_json_keys'] = ours['json_frame_keys'] == theirs['json_frame_keys']
            for key in ('seconds', 'peak_rss_mib', 'peak_disk_mib'):
                row[f'{key}_ratio_ours_over_deeplabcut'] = row['ours'][key] / row['deeplabcut'][key]
            print(f"same result names: {row['same_result_names']}, same h5 layout: {row['same_h5_layout']}; "
                  f"time ratio (ours / DeepLabCut) {row['seconds_ratio_ours_over_deeplabcut']:.2f}")
        for name in outcomes:
            r = row[name]
            if 'error' in r:
                print(f"{name}: results not read: {r['error']}")
                continue
            print(f"{name}: keypoint change {r['keypoint_change_px']:.2f} px; jitter "
                  f"{r['jitter_before_px']:.2f} -> {r['jitter_after_px']:.2f} px")
    write_report('video_adaptation', [row], args.out)


if __name__ == '__main__':
    main()
