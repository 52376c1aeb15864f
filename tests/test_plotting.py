"""Drawing as DeepLabCut's labeled videos draw (strict pcutoff, box threshold, bodypart colours),
and files that appear only when complete."""

import cv2
import numpy as np
import pytest

from superanimal_jax.analysis import plotting
from superanimal_jax.io.files import atomic_path


def test_colors_one_per_topviewmouse_keypoint():
    colors = plotting.bodypart_colors(27)
    assert colors.shape == (27, 3) and colors.dtype == np.uint8 and len({tuple(c) for c in colors}) == 27
    assert plotting.bodypart_colors(5).shape == (5, 3)


def test_draw_frame_thresholds():
    frame = np.zeros((60, 80, 3), np.uint8)
    keypoints = np.array([[[10, 10, 0.5], [30, 10, 0.1], [50, 10, 0.05]], [[-1, -1, -1]] * 3], np.float32)
    boxes = np.array([[5, 30, 20, 20], [40, 30, 20, 20]], np.float32)
    drawn = plotting.draw_frame(frame, keypoints, boxes, np.array([0.95, 0.5]), pcutoff=0.1)
    colors = plotting.bodypart_colors(3)
    assert (drawn[10, 10] == colors[0]).all()  # Above pcutoff: drawn in its bodypart's colour.
    assert (drawn[10, 30] == 0).all() and (drawn[10, 50] == 0).all()  # At / below pcutoff: not.
    assert (drawn[30, 5] == plotting.BOX_COLOR).all()  # Box scoring >= 0.9: drawn ...
    assert (drawn[30, 40] == 0).all()  # ... the 0.5 one is not.
    assert (frame == 0).all()  # The input is untouched.


def test_labeled_video_appears_only_when_complete(tmp_path):
    path = tmp_path / 'labeled.mp4'
    frame = np.full((48, 64, 3), 90, np.uint8)
    keypoints = np.array([[[20, 20, 0.9]]], np.float32)
    with plotting.LabeledVideoWriter(path, 10, (64, 48)) as video:
        for _ in range(5):
            video.write(frame, keypoints)
        assert not path.exists()
    capture = cv2.VideoCapture(str(path))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    with (pytest.raises(RuntimeError),
          plotting.LabeledVideoWriter(tmp_path / 'broken.mp4', 10, (64, 48)) as video):
        video.write(frame, keypoints)
        raise RuntimeError('stop')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['labeled.mp4']
    with pytest.raises(OSError, match='cannot write'):
        plotting.LabeledVideoWriter(tmp_path / 'no' / 'such' / 'x.mp4', 10, (64, 48))


def test_trajectory_plot(tmp_path):
    keypoints = np.random.default_rng(0).uniform(0, 100, (20, 2, 27, 3)).astype(np.float32)
    path = plotting.plot_trajectories(keypoints, tmp_path / 'plot.png', bodyparts=[str(i) for i in range(27)])
    assert cv2.imread(str(path)) is not None and sorted(p.name for p in tmp_path.iterdir()) == ['plot.png']


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'result.json'
    path.write_text('old')
    with pytest.raises(ValueError), atomic_path(path) as temp:
        temp.write_text('half')
        raise ValueError
    assert path.read_text() == 'old' and sorted(p.name for p in tmp_path.iterdir()) == ['result.json']
    with atomic_path(path) as temp:
        temp.write_text('new')
    assert path.read_text() == 'new'
