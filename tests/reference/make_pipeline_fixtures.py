"""Goldens from DeepLabCut 3.0.2's own end-to-end SuperAnimal inference (run inside .ref/).

    .ref/bin/python tests/reference/make_pipeline_fixtures.py --out tests/fixtures/pipeline

1. Writes the test suite's synthetic pose and detector weights (regenerated bit for bit from
   ``tests/fixtures``) as DeepLabCut 3 snapshot files.
2. Cuts an 8-frame clip from the openfield video (``openfield_clip.avi``, MJPG, re-encoded with
   OpenCV) and records the sha256 of every frame OpenCV decodes from it.
3. Runs ``deeplabcut.video_inference_superanimal`` on the clip with those weights (offline,
   ``customized_pose_checkpoint`` / ``customized_detector_checkpoint``, defaults otherwise:
   max_individuals 10, batch sizes 1, no adaptation, no labeled video) and keeps its ``.h5``
   and ``_before_adapt.json`` as ``clip_dlc.h5`` / ``clip_dlc.json``.
4. Runs DeepLabCut's image API path on four labeled openfield frames (``images_dlc.npz``).
``manifest.json`` records versions, arguments, file names and DeepLabCut's wall time.
About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _reference import DATA, ROOT, synthetic

FIXTURES = ROOT / 'tests' / 'fixtures'
VIDEO = DATA / 'videos' / 'm3v1mp4.mp4'
CLIP_FRAMES = 8
IMAGES = ('img0015.png', 'img0045.png', 'img0075.png', 'img0099.png')


def state(name: str) -> dict[str, np.ndarray]:
    return synthetic.fixture_state(FIXTURES, name)


def write_clip(path: Path, count: int = CLIP_FRAMES) -> dict:
    """The first ``count`` frames of the openfield video, MJPG re-encoded at ``path``: what was
    written (size, fps, the decoded frames' digests)."""
    capture = cv2.VideoCapture(str(VIDEO))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    digests = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        digests.append(hashlib.sha256(frame.tobytes()).hexdigest())
    assert len(digests) == count, len(digests)
    return {'frames': count, 'fps': fps, 'size': [width, height], 'decoded_bgr_sha256': digests,
            'source': f'first {count} frames of ../shared/data/openfield/videos/m3v1mp4.mp4, MJPG re-encoded'}


def main() -> None:
    import deeplabcut
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {'made_by': 'tests/reference/make_pipeline_fixtures.py',
            'versions': {'deeplabcut': deeplabcut.__version__, 'torch': torch.__version__,
                         'torchvision': torchvision.__version__, 'numpy': np.__version__,
                         'opencv': cv2.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pose = synthetic.write_pose_checkpoints(state('pose'), tmp)['dlc3']
        detector = synthetic.write_detector_checkpoints(state('detector'), tmp)['dlc3']
        clip = args.out / 'openfield_clip.avi'
        info['clip'] = write_clip(clip)
        work = tmp / 'video'
        work.mkdir()
        shutil.copy(clip, work / clip.name)
        call = dict(videos=[str(work / clip.name)], superanimal_name='superanimal_topviewmouse',
                    model_name='hrnet_w32', detector_name='fasterrcnn_resnet50_fpn_v2',
                    customized_pose_checkpoint=str(pose), customized_detector_checkpoint=str(detector),
                    dest_folder=str(work), video_adapt=False, create_labeled_video=False, device='cpu')
        start = time.perf_counter()
        deeplabcut.video_inference_superanimal(**call)
        info['deeplabcut_seconds'] = time.perf_counter() - start
        info['call'] = {k: (Path(v).name if k.startswith('customized') else v) for k, v in call.items()
                        if k not in ('videos', 'dest_folder')}
        produced = sorted(p.name for p in work.iterdir() if p.name != clip.name)
        info['produced'] = produced
        (h5,) = [p for p in produced if p.endswith('.h5')]
        (js,) = [p for p in produced if p.endswith('.json')]
        shutil.copy(work / h5, args.out / 'clip_dlc.h5')
        shutil.copy(work / js, args.out / 'clip_dlc.json')
        info['scorer'] = h5[len(Path(clip.name).stem) + 1:-len('.h5')]
        info['images'] = images(pose, detector, args.out)
    (args.out / 'manifest.json').write_text(json.dumps(info, indent=1) + '\n')


def images(pose: Path, detector: Path, out: Path) -> dict:
    """DeepLabCut's image path on labeled frames: its own inference runners, built as its image
    API builds them (``superanimal_analyze_images``)."""
    from deeplabcut.pose_estimation_pytorch.apis.analyze_images import superanimal_analyze_images

    paths = [str(DATA / 'labeled-data' / 'm4s1' / name) for name in IMAGES]
    start = time.perf_counter()
    predictions = superanimal_analyze_images(
        superanimal_name='superanimal_topviewmouse', model_name='hrnet_w32',
        detector_name='fasterrcnn_resnet50_fpn_v2', images=paths, max_individuals=10,
        out_folder=str(out / '_labeled_images'), customized_pose_checkpoint=str(pose),
        customized_detector_checkpoint=str(detector), device='cpu')
    seconds = time.perf_counter() - start
    shutil.rmtree(out / '_labeled_images', ignore_errors=True)
    arrays = {}
    for path in paths:
        found = predictions[path]
        name = Path(path).name
        arrays[f'{name}/bodyparts'] = np.asarray(found['bodyparts'], np.float32)
        arrays[f'{name}/bboxes'] = np.asarray(found['bboxes'], np.float32)
        arrays[f'{name}/bbox_scores'] = np.asarray(found['bbox_scores'], np.float32)
    np.savez_compressed(out / 'images_dlc.npz', **arrays)
    return {'names': list(IMAGES), 'deeplabcut_seconds': seconds}


if __name__ == '__main__':
    main()
