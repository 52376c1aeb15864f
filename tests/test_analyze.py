"""The analysis plumbing on synthetic videos with a thresholding detector and the tiny pose
variant (fakes.py): streaming batches, -1 padding, result files and their layout, identical
results whatever the batch size, and bad input that must fail cleanly without leaving files."""

import hashlib
import json
import os
import resource

import numpy as np
import pandas as pd
import pytest

from superanimal_jax.analysis.analyze import analyze_images, analyze_video
from superanimal_jax.errors import TruncatedVideoWarning, VideoError
from superanimal_jax.io.results import SUPERANIMAL_SCORER
from superanimal_jax.io.video import VideoReader
from superanimal_jax.transforms import crops

import fakes

M = 3  # max_individuals


@pytest.fixture(scope='module')
def model():
    return fakes.tiny_model()


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return fakes.write_video(tmp_path_factory.mktemp('video') / 'clip.avi', 40)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_predict_pads_absent_individuals_and_maps_keypoints_back(model):
    frames = np.stack([fakes.frame(i) for i in range(8)])
    out = model.predict(frames, max_individuals=M, batch_size=3)
    assert out['keypoints'].shape == (8, M, len(fakes.BODYPARTS), 3) and out['keypoints'].dtype == np.float32
    assert out['boxes'].shape == (8, M, 4) and out['box_scores'].shape == (8, M)
    np.testing.assert_array_equal(out['box_scores'][:, 2], -1)  # The fake finds at most two.
    assert (out['keypoints'][6] == -1).all() and (out['boxes'][6] == -1).all()  # Frame 6: nothing.
    # Frame 0, individual 0, by hand: box -> window -> OpenCV crop -> pose -> frame pixels.
    found = fakes.ThresholdDetector().detect(frames[:1], M)
    box = crops.xyxy_to_xywh(np.asarray(found['boxes'])[0, :1])
    np.testing.assert_array_equal(out['boxes'][0, 0], box[0])
    window = crops.crop_windows(box)
    crop = crops.crop(frames[0], window[0])
    local = np.asarray(model.pose.keypoints_uint8(crop[None]))
    np.testing.assert_array_equal(out['keypoints'][0, 0],
                                  crops.to_frame(local, *crops.scales_and_offsets(window))[0])


def test_predict_rejects_bad_frames(model):
    with pytest.raises(ValueError, match='uint8'):
        model.predict(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match='one frame'):
        model.predict(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match='max_individuals'):
        model.predict(np.zeros((1, 64, 64, 3), np.uint8), max_individuals=0)


def test_video_results_layout(model, video, tmp_path):
    paths = analyze_video(video, model, tmp_path, max_individuals=M, batch_size=8, csv=True, progress=False)
    stem = f'clip_{SUPERANIMAL_SCORER}'
    assert listing(tmp_path) == sorted([f'{stem}.h5', f'{stem}.csv', f'{stem}_before_adapt.json'])
    frame = pd.read_hdf(paths['h5'], 'df_with_missing')
    assert frame.columns.names == ['scorer', 'individuals', 'bodyparts', 'coords']
    assert list(frame.columns.levels[1]) == [f'animal{i}' for i in range(M)]
    assert frame.columns[:3].tolist() == [(SUPERANIMAL_SCORER, 'animal0', 'nose', c)
                                          for c in ('x', 'y', 'likelihood')]
    assert frame.index.tolist() == list(range(40)) and (frame.dtypes == np.float32).all()
    decoded = np.stack([b.frames[i] for b in VideoReader(video).batches(40) for i in range(b.count)])
    expected = model.predict(decoded, max_individuals=M)
    np.testing.assert_array_equal(frame.to_numpy().reshape(40, M, -1, 3), expected['keypoints'])
    csv = pd.read_csv(paths['csv'], header=[0, 1, 2, 3], index_col=0)
    np.testing.assert_allclose(csv.to_numpy(), frame.to_numpy(), rtol=1e-6)
    items = json.loads(paths['json'].read_text())
    assert len(items) == 40 and set(items[0]) == {'bodyparts', 'bboxes', 'bbox_scores'}
    np.testing.assert_array_equal(np.array(items[5]['bboxes'], np.float32), expected['boxes'][5])


def test_results_do_not_depend_on_batch_size(model, video, tmp_path):
    digests = set()
    for batch_size in (1, 3, 8):
        out = tmp_path / str(batch_size)
        out.mkdir()
        paths = analyze_video(video, model, out, max_individuals=M, batch_size=batch_size, progress=False)
        digests.add(tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()))
    assert len(digests) == 1


def test_frame_range(model, video, tmp_path):
    paths = analyze_video(video, model, tmp_path, max_individuals=M, start=10, stop=17, progress=False)
    assert pd.read_hdf(paths['h5']).index.tolist() == list(range(7))  # Rows count from the range start.
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='at least one frame'):
        analyze_video(video, model, tmp_path / 'empty', max_individuals=M, start=10, stop=10, progress=False)
    assert listing(tmp_path / 'empty') == []


@pytest.mark.parametrize('case', ['missing', 'not_a_video', 'zero_frames'])
def test_bad_video_fails_before_writing(model, tmp_path, case):
    path = tmp_path / 'input.avi'
    if case == 'not_a_video':
        path.write_text('this is not a video\n')
    elif case == 'zero_frames':
        fakes.write_video(path, 0)
    before = listing(tmp_path)
    message = {'missing': 'no such video', 'not_a_video': 'not a video|no decodable',
               'zero_frames': 'not a video|no decodable'}
    with pytest.raises(VideoError, match=message[case]):
        analyze_video(path, model, tmp_path, max_individuals=M, progress=False)
    assert listing(tmp_path) == before


def test_truncated_video_keeps_the_frames_before_the_damage(model, video, tmp_path):
    data = video.read_bytes()
    damaged = tmp_path / 'damaged.avi'
    damaged.write_bytes(data[:len(data) // 2])
    with pytest.warns(TruncatedVideoWarning, match='decoding stopped at frame'):
        paths = analyze_video(damaged, model, tmp_path, max_individuals=M, batch_size=8, progress=False)
    frame = pd.read_hdf(paths['h5'])
    assert len(frame) == 40  # Every frame the header promises has a row ...
    missing = frame.isna().all(axis=1).to_numpy()
    first = int(np.argmax(missing))
    assert 5 < first < 35 and missing[first:].all() and not missing[:first].any()  # ... NaN after the damage.
    (tmp_path / 'whole').mkdir()
    whole = pd.read_hdf(analyze_video(video, model, tmp_path / 'whole', max_individuals=M,
                                      progress=False)['h5'])
    np.testing.assert_array_equal(frame.to_numpy()[:first], whole.to_numpy()[:first])
    items = json.loads(paths['json'].read_text())
    assert items[first] is None and items[first - 1] is not None


def test_missing_output_folder_is_made(model, video, tmp_path):
    """As DeepLabCut's video_inference_superanimal: the folder is made with its parents, and the
    files are the same as in a folder that existed."""
    existing = tmp_path / 'existing'
    existing.mkdir()
    made = tmp_path / 'not' / 'there' / 'yet'
    first = analyze_video(video, model, existing, max_individuals=M, csv=True, labeled_video=True,
                          progress=False)
    second = analyze_video(video, model, made, max_individuals=M, csv=True, labeled_video=True,
                           progress=False)
    assert listing(made) == listing(existing) and len(listing(made)) == 4
    for key in ('h5', 'csv', 'json'):
        assert first[key].read_bytes() == second[key].read_bytes(), key
    images = tmp_path / 'images'
    images.mkdir()
    import cv2

    cv2.imwrite(str(images / 'img0.png'), cv2.cvtColor(fakes.frame(0), cv2.COLOR_RGB2BGR))
    analyze_images(images, model, tmp_path / 'image' / 'results', max_individuals=M, progress=False)
    assert listing(tmp_path / 'image' / 'results') == sorted([f'images_{SUPERANIMAL_SCORER}.h5',
                                                              f'images_{SUPERANIMAL_SCORER}.json'])


def test_unwritable_output_folder(model, video, tmp_path):
    import cv2

    blocker = tmp_path / 'file'
    blocker.write_text('')
    images = tmp_path / 'images'
    images.mkdir()
    cv2.imwrite(str(images / 'img0.png'), cv2.cvtColor(fakes.frame(0), cv2.COLOR_RGB2BGR))

    class Counting(fakes.ThresholdDetector):
        def detect(self, frames, max_detections=100):
            raise AssertionError('work started before the output folder was checked')

    for out in (blocker, blocker / 'below'):
        with pytest.raises(NotADirectoryError, match=f'{blocker} is a file, not a folder'):
            analyze_video(video, fakes.tiny_model(Counting()), out, max_individuals=M, progress=False)
        with pytest.raises(NotADirectoryError, match='is a file, not a folder'):
            analyze_images(images, model, out, max_individuals=M, progress=False)
    assert blocker.read_text() == ''
    if os.geteuid() != 0:  # Root ignores permission bits.
        locked = tmp_path / 'locked'
        locked.mkdir(0o500)
        with pytest.raises(OSError, match='cannot write'):
            analyze_video(video, model, locked, max_individuals=M, progress=False)
        assert listing(locked) == []


def test_failure_midway_leaves_no_result_files(video, tmp_path):
    class Failing(fakes.ThresholdDetector):
        def detect(self, frames, max_detections=100):
            if self.calls == 2:
                raise RuntimeError('device lost')
            return super().detect(frames, max_detections)

    with pytest.raises(RuntimeError, match='device lost'):
        analyze_video(video, fakes.tiny_model(Failing()), tmp_path, max_individuals=M, batch_size=4,
                      csv=True, progress=False)
    assert listing(tmp_path) == []


def test_existing_results_survive_a_failed_rerun(model, video, tmp_path):
    paths = analyze_video(video, model, tmp_path, max_individuals=M, progress=False)
    before = {p: p.read_bytes() for p in paths.values()}

    class Failing(fakes.ThresholdDetector):
        def detect(self, frames, max_detections=100):
            raise RuntimeError('boom')

    with pytest.raises(RuntimeError):
        analyze_video(video, fakes.tiny_model(Failing()), tmp_path, max_individuals=M, progress=False)
    assert {p: p.read_bytes() for p in paths.values()} == before
    assert listing(tmp_path) == sorted(p.name for p in paths.values())


def test_memory_is_bounded_by_the_batch_not_the_video(model, tmp_path):
    """Peak RSS after one pass over 1,500 frames and after a second: streaming must not grow with
    length (the full 20,000-frame measurement is benchmarks/long_video_memory.py).  Keeping every
    frame would add 55 MiB, every crop 560 MiB.  What a pass adds without keeping anything varies
    on 2 cores: 8 to 51 MiB measured for the first pass and 3 to 31 MiB for the second, with the
    old fixed 32-crop chunks as with today's pieces (allocator pools)."""
    video = fakes.write_video(tmp_path / 'long.avi', 1500)
    analyze_video(video, model, tmp_path, max_individuals=M, batch_size=16, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    analyze_video(video, model, tmp_path, max_individuals=M, batch_size=16, progress=False)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    print(f'peak RSS grew by {grown:.1f} MiB over 1,500 more frames')
    assert grown < 45


def test_images(model, tmp_path):
    import cv2

    folder = tmp_path / 'images'
    folder.mkdir()
    for i in (0, 6, 9):
        cv2.imwrite(str(folder / f'img{i}.png'), cv2.cvtColor(fakes.frame(i), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / 'big.png'), cv2.cvtColor(fakes.frame(2, (128, 160)), cv2.COLOR_RGB2BGR))
    out = tmp_path / 'out'
    out.mkdir()
    results = analyze_images(folder, model, out, max_individuals=M, labeled=True, progress=False)
    assert [p.name for p in results] == ['big.png', 'img0.png', 'img6.png', 'img9.png']
    expected = model.predict(np.stack([fakes.frame(i) for i in (0, 6, 9)]), max_individuals=M)
    np.testing.assert_array_equal(np.stack([results[folder / f'img{i}.png']['keypoints'] for i in (0, 6, 9)]),
                                  expected['keypoints'])
    frame = pd.read_hdf(out / f'images_{SUPERANIMAL_SCORER}.h5')
    assert frame.index.tolist() == [str(p) for p in results]
    assert sorted(p.name for p in out.glob('*_labeled.png')) == ['big_labeled.png', 'img0_labeled.png',
                                                               'img6_labeled.png', 'img9_labeled.png']
    (folder / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='broken.png'):
        analyze_images(folder, model, tmp_path / 'out', max_individuals=M, progress=False)


def test_cli_makes_the_output_folder_and_refuses_a_file(model, video, tmp_path, monkeypatch, capsys):
    import superanimal_jax
    from superanimal_jax import cli

    loads = []
    monkeypatch.setattr(superanimal_jax, 'load', lambda *a, **k: loads.append(k) or model)
    blocker = tmp_path / 'file'
    blocker.write_text('')
    assert cli.main(['analyze', str(video), '--model', str(tmp_path), '--out', str(blocker),
                     '--max-individuals', str(M)]) == 2
    assert 'is a file, not a folder' in capsys.readouterr().err and not loads  # Before the model loads.
    out = tmp_path / 'new' / 'folder'
    assert cli.main(['analyze', str(video), '--model', str(tmp_path), '--out', str(out),
                     '--max-individuals', str(M), '--precision', 'default']) == 0
    assert loads == [{'dtype': 'float32', 'precision': 'default'}]
    assert listing(out) == sorted([f'clip_{SUPERANIMAL_SCORER}.h5',
                                   f'clip_{SUPERANIMAL_SCORER}_before_adapt.json'])
