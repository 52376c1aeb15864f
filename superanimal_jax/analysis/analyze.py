"""Analyse videos and images end to end, writing DeepLabCut-compatible result files.

``analyze_video`` streams a video through the top-down pipeline in fixed-size batches (decoding
ahead in a background thread, memory bounded whatever the length) and writes the h5 / csv /
json of :mod:`superanimal_jax.io.results`, optionally a labeled video and a trajectory plot.
``analyze_images`` does the same for image files.  Bad input fails before anything is written;
a failure midway leaves no result file behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from superanimal_jax.io.images import image_files, read_image
from superanimal_jax.io.results import SUPERANIMAL_SCORER, ResultWriter, output_folder
from superanimal_jax.io.video import VideoReader


def analyze_video(video: str | os.PathLike, model, out_dir: str | os.PathLike | None = None, *,
                  max_individuals: int = 10, batch_size: int = 8, pcutoff: float = 0.1,
                  bbox_threshold: float = 0.9, labeled_video: bool = False, csv: bool = False,
                  plot_trajectories: bool = False, start: int = 0, stop: int | None = None,
                  scorer: str = SUPERANIMAL_SCORER, progress: bool = True, network: str | None = None,
                  scales: Sequence[int] | None = None, stage: str = 'before_adapt') -> dict[str, Path]:
    """SuperAnimal-TopViewMouse poses for frames ``[start, stop)`` of ``video``.

    ``model`` is a :class:`superanimal_jax.SuperAnimalModel`; ``network`` picks its pipeline
    (default: the top-down model when it holds a detector and a pose model, else the DLCRNet).

    Top-down: writes ``<stem>_<scorer>.h5`` (and ``.csv`` with ``csv``),
    ``<stem>_<scorer>_before_adapt.json``, with ``labeled_video``
    ``<stem>_<scorer>_labeled_before_adapt.mp4`` (keypoints with likelihood above ``pcutoff``,
    boxes scoring at least ``bbox_threshold``; ``stage='after_adapt'``: DeepLabCut's names after
    video adaptation, ``..._after_adapt.json`` and ``..._labeled_after_adapt.mp4``) and with
    ``plot_trajectories``
    ``<stem>_<scorer>_trajectories.png``, in ``out_dir`` (default: the video's folder; made, with
    its parents, if missing).  Returns the paths written.  With a frame range, row ``i`` of the
    results is frame ``start + i`` of the video.

    DLCRNet: DeepLabCut's TF ``video_inference`` output, ``<stem>DLC_snapshot-N.h5`` (one animal,
    rows ``frame0..``, float64; ``.csv`` with ``csv``), at ``scales`` (frame heights, default
    ``[H - 50, H, H + 50]``); the labeled video and plot as above (``scorer`` is the file's).
    """
    reader = VideoReader(video, start, stop)
    out_dir = output_folder(out_dir) if out_dir is not None else reader.path.parent
    if model.network(network) == 'dlcrnet':
        return _analyze_video_dlcrnet(reader, model.dlcrnet, out_dir, batch_size=batch_size,
                                      pcutoff=pcutoff, labeled_video=labeled_video, csv=csv,
                                      plot_trajectories=plot_trajectories, progress=progress, scales=scales)
    pipeline = model.pipeline(max_individuals)
    bodyparts = model.keypoint_names
    stem = reader.path.stem
    with contextlib.ExitStack() as stack:
        # Exits in reverse order: the labeled video is committed (or discarded) before the results.
        writer = stack.enter_context(ResultWriter(out_dir, stem, bodyparts, max_individuals, scorer=scorer,
                                                  csv=csv, stage=stage))
        labeled = None
        if labeled_video:
            from superanimal_jax.analysis.plotting import LabeledVideoWriter

            labeled = stack.enter_context(LabeledVideoWriter(
                out_dir / f'{stem}_{scorer}_labeled_{stage}.mp4', reader.fps,
                (reader.width, reader.height), pcutoff=pcutoff, bbox_threshold=bbox_threshold))

        def write(batch, predictions) -> None:
            writer.write(predictions)
            for i in range(batch.count if labeled is not None else 0):
                labeled.write(batch.frames[i], predictions['keypoints'][i], predictions['boxes'][i],
                              predictions['box_scores'][i])

        _stream(reader, batch_size, pipeline.stream, write, writer, progress)
    trajectories = out_dir / f'{stem}_{scorer}_trajectories.png' if plot_trajectories else None
    return _paths(writer, labeled, trajectories, max_individuals, bodyparts, pcutoff)


def _stream(reader: VideoReader, batch_size: int, run, write, writer: ResultWriter, progress: bool) -> None:
    """Decode ``reader`` in batches, ``run`` them (an iterator of ``(frames, count)`` in, one result
    per batch out, in order), ``write(batch, result)``; NaN rows for frames a truncated video did
    not deliver."""
    in_flight = collections.deque()

    def batches():
        for batch in reader.batches(batch_size):
            in_flight.append(batch)
            yield batch.frames, batch.count

    done = 0
    with tqdm(total=len(reader) or None, unit='frame', desc=reader.path.stem, disable=not progress,
              smoothing=0.1) as bar:
        for result in run(batches()):
            batch = in_flight.popleft()
            write(batch, result)
            done += batch.count
            bar.update(batch.count)
    if reader.truncated_at is not None:
        writer.write_missing(len(reader) - done)


def _paths(writer: ResultWriter, labeled, trajectories: Path | None, max_individuals: int, bodyparts,
           pcutoff: float) -> dict[str, Path]:
    """The files written (and the trajectory plot drawn from the h5 when asked)."""
    paths = dict(writer.paths)
    if labeled is not None:
        paths['labeled_video'] = labeled.path
    if trajectories is not None:
        paths['trajectories'] = _plot(paths['h5'], trajectories, max_individuals, bodyparts, pcutoff)
    return paths


def _analyze_video_dlcrnet(reader: VideoReader, dlcrnet, out_dir: Path, *, batch_size: int, pcutoff: float,
                           labeled_video: bool, csv: bool, plot_trajectories: bool, progress: bool,
                           scales) -> dict[str, Path]:
    from superanimal_jax.inference.dlcrnet import frame_names
    from superanimal_jax.transforms.scales import check_scales

    if scales is not None:
        scales = check_scales(scales)
    stem, scorer, bodyparts = reader.path.stem, dlcrnet.scorer, dlcrnet.keypoint_names
    total = max(reader.header_frames, reader.start + len(reader))  # DeepLabCut: the header's count.

    def names(row: int, count: int) -> list[str]:
        return frame_names(count, total, reader.start + row)

    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(ResultWriter(out_dir, stem, bodyparts, None, scorer=scorer, csv=csv,
                                                  separator='', row_names=names, dtype=np.float64))
        labeled = None
        if labeled_video:
            from superanimal_jax.analysis.plotting import LabeledVideoWriter

            labeled = stack.enter_context(LabeledVideoWriter(
                out_dir / f'{stem}{scorer}_labeled.mp4', reader.fps, (reader.width, reader.height),
                pcutoff=pcutoff))

        def write(batch, keypoints) -> None:
            writer.write({'keypoints': keypoints})
            for i in range(batch.count if labeled is not None else 0):
                labeled.write(batch.frames[i], np.nan_to_num(keypoints[i][None], nan=-1.0))

        _stream(reader, batch_size, lambda batches: dlcrnet.stream(batches, scales=scales), write, writer,
                progress)
    trajectories = out_dir / f'{stem}{scorer}_trajectories.png' if plot_trajectories else None
    return _paths(writer, labeled, trajectories, 1, bodyparts, pcutoff)


def analyze_videos(videos: Sequence[str | os.PathLike], model, out_dir: str | os.PathLike | None = None,
                   **options) -> dict[Path, dict[str, Path]]:
    """:func:`analyze_video` on this process's share of ``videos``
    (:func:`superanimal_jax.parallel.process_share`: with N processes, every N-th video).

    Started on every host of a multi-host job, each host analyses its share on its own devices
    and writes exactly the files a single-host run writes for those videos.  Returns ``{video:
    paths written}`` for this process's videos.
    """
    from superanimal_jax import parallel

    videos = [Path(v) for v in videos]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:  # Every process checks every video, so no host starts a job that will fail.
        raise FileNotFoundError(f'no such video file: {", ".join(missing)}')
    if out_dir is not None and videos:
        output_folder(out_dir)
    return {video: analyze_video(video, model, out_dir, **options)
            for video in parallel.process_share(videos)}


def _plot(h5: Path, path: Path, max_individuals: int, bodyparts, pcutoff: float) -> Path:
    import pandas as pd

    from superanimal_jax.analysis.plotting import plot_trajectories

    values = pd.read_hdf(h5, 'df_with_missing').to_numpy(np.float32)
    keypoints = values.reshape(len(values), max_individuals, len(bodyparts), 3)
    return plot_trajectories(keypoints, path, pcutoff=pcutoff, bodyparts=bodyparts, title=h5.stem)


def analyze_images(images: Sequence[str | os.PathLike] | str | os.PathLike, model,
                   out_dir: str | os.PathLike | None = None, *, max_individuals: int = 10,
                   batch_size: int = 8, pcutoff: float = 0.1, bbox_threshold: float = 0.9,
                   labeled: bool = False, scorer: str = SUPERANIMAL_SCORER, name: str = 'images',
                   progress: bool = True) -> dict:
    """SuperAnimal poses for image files (or folders of them).

    Returns ``{path: {'keypoints': (M, 27, 3), 'boxes': (M, 4), 'box_scores': (M,)}}``.  With
    ``out_dir`` (made, with its parents, if missing), also writes ``<name>_<scorer>.h5`` (indexed
    by image path), ``.json`` and, with ``labeled``, ``<image stem>_labeled.png`` per image.
    Images of different sizes are batched by size (one compiled detector per size).
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    files = image_files(images)
    if not files:
        raise ValueError('no image files given')
    loaded = {p: read_image(p) for p in files}  # Every file is checked before any work is done.
    if out_dir is not None:
        out_dir = output_folder(out_dir)
    pipeline = model.pipeline(max_individuals)
    results = {}
    by_size = collections.defaultdict(list)
    for path, image in loaded.items():
        by_size[image.shape].append(path)
    with tqdm(total=len(files), unit='image', disable=not progress) as bar:
        for paths in by_size.values():
            found = pipeline.predict(np.stack([loaded[p] for p in paths]), batch_size=batch_size)
            for i, path in enumerate(paths):
                results[path] = {k: v[i] for k, v in found.items()}
            bar.update(len(paths))
    results = {p: results[p] for p in files}
    if out_dir is not None:
        _write_images(results, loaded, Path(out_dir), model.keypoint_names, max_individuals, scorer,
                      name, labeled, pcutoff, bbox_threshold)
    return results


def _write_images(results, loaded, out_dir, bodyparts, max_individuals, scorer, name, labeled, pcutoff,
                  bbox_threshold) -> None:
    import json

    import pandas as pd

    from superanimal_jax.io.files import atomic_path
    from superanimal_jax.io.results import columns, write_h5

    index = [str(p) for p in results]
    values = np.stack([r['keypoints'].reshape(-1) for r in results.values()]).astype(np.float32)
    frame = pd.DataFrame(values, columns=columns(scorer, bodyparts, max_individuals), index=index)
    with atomic_path(out_dir / f'{name}_{scorer}.h5') as temp:
        write_h5(frame, temp)
    with atomic_path(out_dir / f'{name}_{scorer}.json') as temp:
        temp.write_text(json.dumps({str(p): {'bodyparts': r['keypoints'].tolist(),
                                             'bboxes': r['boxes'].tolist(),
                                             'bbox_scores': r['box_scores'].tolist()}
                                    for p, r in results.items()}))
    if labeled:
        from superanimal_jax.analysis.plotting import draw_frame

        for path, r in results.items():
            drawn = draw_frame(loaded[path], r['keypoints'], r['boxes'], r['box_scores'], pcutoff=pcutoff,
                               bbox_threshold=bbox_threshold)
            with atomic_path(out_dir / f'{path.stem}_labeled.png') as temp:
                if not cv2.imwrite(str(temp), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
                    raise OSError(f'cannot write {temp}')
