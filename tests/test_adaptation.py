"""Video adaptation: pseudo-labels against DeepLabCut's own ``pseudo_label.py``.

Goldens: ``tests/reference/make_pseudo_label_fixtures.py`` (DeepLabCut 3.0.2's
``dlc3predictions_2_annotation_from_video`` on a seeded first-pass json, three threshold settings).
"""

import json

import jax
import numpy as np
import pytest

from superanimal_jax.adaptation.pseudo_labels import (
    frame_name,
    pseudo_labels,
    read_predictions,
    selected_frames,
)

from conftest import FIXTURES

GOLDENS = ('pseudo_labels/manifest.json',)
PSEUDO = FIXTURES / 'pseudo_labels'


@pytest.fixture(scope='module')
def manifest():
    return json.loads((PSEUDO / 'manifest.json').read_text())


@pytest.mark.parametrize('setting', ('default', 'loose', 'strict'))
def test_pseudo_labels_equal_deeplabcuts(manifest, setting, tmp_path):
    """The same COCO train/test sets, byte for byte once written, from the same first-pass json."""
    thresholds = manifest['settings'][setting]
    ours = pseudo_labels(read_predictions(PSEUDO / 'predictions.json'), manifest['frame_size'],
                         manifest['bodyparts'], pose_threshold=thresholds['pose_threshold'],
                         bbox_threshold=thresholds['bbox_threshold'])
    paths = ours.write(tmp_path / 'pseudo')
    for split in ('train', 'test'):
        want = (PSEUDO / setting / f'{split}.json').read_text()
        assert getattr(ours, split) == json.loads(want), split
        assert paths[split].read_text() == want, split
    assert [image['file_name'] for image in ours.train['images']] == [frame_name(f) for f in ours.frames]
    golden_train = json.loads((PSEUDO / setting / 'train.json').read_text())
    assert ours.num_annotations == len(golden_train['annotations'])


def test_the_goldens_cover_deeplabcuts_quirks(manifest):
    """What the fixture shows: skipped image ids, a test.json whose images and annotations do not
    match, masked keypoints 'visible' at (0, 0), the w * y area."""
    train = json.loads((PSEUDO / 'default' / 'train.json').read_text())
    test = json.loads((PSEUDO / 'default' / 'test.json').read_text())
    ids = [image['id'] for image in train['images']]
    assert ids != list(range(len(ids)))  # Frames where nobody was kept leave gaps.
    assert len(train['annotations']) > 10 and len(test['annotations']) == 10
    assert {a['image_id'] for a in test['annotations']} != {image['id'] for image in test['images']}
    keypoints = np.array([a['keypoints'] for a in train['annotations']]).reshape(-1, 3)
    assert (keypoints[:, 2] == 2).all() and ((keypoints[:, 0] == 0) & (keypoints[:, 1] == 0)).any()
    box = train['annotations'][0]['bbox']
    assert train['annotations'][0]['area'] == box[2] * box[1]


def test_frames_are_chosen_by_name_as_deeplabcut_sorts_them():
    np.testing.assert_array_equal(selected_frames(35), [0, 10, 20, 30])
    np.testing.assert_array_equal(selected_frames(35, order='frames'), [0, 10, 20, 30])
    # Past 99,999 frames the names sort out of time order: frame_100000 comes after frame_10000.
    by_name = selected_frames(100_012, every=1)
    np.testing.assert_array_equal(by_name[10_000:10_004], [10_000, 100_000, 100_001, 100_002])
    assert selected_frames(100_012).tolist() != selected_frames(100_012, order='frames').tolist()
    with pytest.raises(ValueError, match='order must be'):
        selected_frames(10, order='time')


def test_undecoded_frames_and_bad_input(manifest, tmp_path):
    predictions = read_predictions(PSEUDO / 'predictions.json')
    full = pseudo_labels(predictions, manifest['frame_size'], manifest['bodyparts'])
    first = full.frames[0]
    gaps = pseudo_labels([None if i == first else p for i, p in enumerate(predictions)],
                         manifest['frame_size'], manifest['bodyparts'])
    assert first not in gaps.frames and gaps.frames == full.frames[1:]
    shorter = pseudo_labels(predictions, manifest['frame_size'], manifest['bodyparts'], num_frames=first + 1)
    assert shorter.frames == (first,)
    with pytest.raises(ValueError, match='SuperAnimal'):
        pseudo_labels(predictions, manifest['frame_size'], manifest['bodyparts'], superanimal_name='mouse')
    broken = dict(predictions[0], bbox_scores=[0.99])
    with pytest.raises(ValueError, match='3 poses, 3 boxes and 1 box scores'):
        pseudo_labels([broken], manifest['frame_size'], manifest['bodyparts'])
    (tmp_path / 'bad.json').write_text('{"bodyparts": []}')
    with pytest.raises(ValueError, match='not a list of per-frame predictions'):
        read_predictions(tmp_path / 'bad.json')
    (tmp_path / 'cut.json').write_text('[{"bodyparts": ')
    with pytest.raises(ValueError, match='cannot read the first-pass predictions'):
        read_predictions(tmp_path / 'cut.json')


def test_adaptation_items_from_the_pseudo_labels(manifest):
    """A pose item per annotation (its detector box, DeepLabCut's fake visible (0, 0) points), a
    detector item per frame with all its boxes."""
    from superanimal_jax.adaptation.data import detector_items, frame_index, pose_items

    labels = pseudo_labels(read_predictions(PSEUDO / 'predictions.json'), manifest['frame_size'],
                           manifest['bodyparts'], pose_threshold=0.1, bbox_threshold=0.9)
    items = pose_items(labels)
    assert len(items) == labels.num_annotations
    for item, annotation in zip(items, labels.train['annotations']):
        assert frame_index(item.image) in labels.frames
        np.testing.assert_array_equal(item.bbox, annotation['bbox'])
        np.testing.assert_array_equal(item.keypoints.reshape(-1), annotation['keypoints'])
    assert any(((i.keypoints[:, :2] == 0).all(1) & (i.keypoints[:, 2] == 2)).any() for i in items)
    boxes = detector_items(labels)
    assert [frame_index(b.image) for b in boxes] == list(labels.frames)
    assert sum(len(b.boxes) for b in boxes) == labels.num_annotations
    with pytest.raises(ValueError, match='not a frame name'):
        frame_index('img0001.png')


def test_pose_items_crop_around_their_own_box(tmp_path):
    """An item with a box is cropped around that box (clipped to the frame), not around its
    keypoints plus the project margin."""
    from superanimal_jax.training.data import DataConfig, Item, TrainData
    from superanimal_jax.transforms.augment import TrainAugmentation

    image = np.zeros((100, 200, 3), np.uint8)
    keypoints = np.array([[150.0, 50.0, 2.0], [0.0, 0.0, 2.0], [160.0, 60.0, 1.0]])
    config = DataConfig(batch_size=1, augmentation=TrainAugmentation.off(), workers=1)
    boxed = TrainData([Item('f', keypoints, np.array([140.0, 40.0, 80.0, 30.0]))], config,
                      read_image=lambda _: image)
    sample = boxed.sample(0, None)
    # The box clipped to the frame: x 140..200, y 40..70.
    normalised = TrainData([Item('f', keypoints, np.array([140.0, 40.0, 60.0, 30.0]))], config,
                           read_image=lambda _: image).sample(0, None)
    for key in ('image', 'keypoints', 'offsets', 'scales'):
        np.testing.assert_array_equal(sample[key], normalised[key])
    assert sample['scales'][0] == pytest.approx(60 / 256)
    assert sample['keypoints'][1, 2] == 0  # The fake (0, 0) point lies outside this crop.
    plain = TrainData([Item('f', keypoints)], config, read_image=lambda _: image).sample(0, None)
    assert plain['scales'][0] != pytest.approx(sample['scales'][0])


def test_video_frames_are_the_sequentially_decoded_frames(tmp_path):
    import cv2

    from superanimal_jax.adaptation.data import VideoFrames
    from superanimal_jax.adaptation.pseudo_labels import frame_name
    from superanimal_jax.errors import VideoError

    from fakes import write_video

    video = write_video(tmp_path / 'clip.avi', 25)
    capture = cv2.VideoCapture(str(video))
    decoded = [capture.read()[1][..., ::-1] for _ in range(25)]
    capture.release()
    frames = VideoFrames(video, [0, 10, 20])
    for i in (20, 0, 10):
        np.testing.assert_array_equal(frames(frame_name(i)), decoded[i])
    with pytest.raises(KeyError, match='not one of the pseudo-labelled frames'):
        frames(frame_name(5))
    with pytest.raises(VideoError, match=r'frames \[30\] could not be decoded'):
        VideoFrames(video, [10, 30])(frame_name(10))


def test_adapted_scorer_is_deeplabcuts():
    from superanimal_jax.adaptation.adapt import AdaptConfig, adapted_scorer

    assert adapted_scorer(AdaptConfig()) == ('superanimal_topviewmouse_snapshot-hrnet_w32-004_'
                                             'snapshot-fasterrcnn_resnet50_fpn_v2-004')
    assert adapted_scorer(AdaptConfig(pose_epochs=12, detector_epochs=2)) == (
        'superanimal_topviewmouse_snapshot-hrnet_w32-012_snapshot-fasterrcnn_resnet50_fpn_v2-002')
    with pytest.raises(ValueError, match='>= 0'):
        AdaptConfig(pose_epochs=-1)


def test_video_adapt_refuses_images_and_frame_ranges(tmp_path, capsys):
    """Bad combinations fail before any model is loaded or anything written."""
    import cv2

    from superanimal_jax import cli

    from fakes import write_video

    video = write_video(tmp_path / 'clip.avi', 3)
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    model = ['--model', str(tmp_path / 'none')]
    assert cli.main(['analyze', str(video), str(image), '--video-adapt', *model]) == 2
    assert 'adapts to videos, not images' in capsys.readouterr().err
    assert cli.main(['analyze', str(video), '--video-adapt', '--start', '1', *model]) == 2
    assert 'no --network dlcrnet, --scales, --start or --stop' in capsys.readouterr().err
    assert cli.main(['analyze', str(video), '--video-adapt', '--precision', 'default', *model]) == 2
    assert 'float32 at the highest precision, as DeepLabCut does' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['clip.avi', 'frame.png']


@pytest.fixture(scope='module')
def adapt_model(detector_variables, tiny_model_dir, tmp_path_factory):
    """The synthetic detector with the tiny pose network (27 keypoints)."""
    import superanimal_jax
    from superanimal_jax.checkpoints import model_dir

    pose = superanimal_jax.load(tiny_model_dir)
    return model_dir.write(tmp_path_factory.mktemp('adapt') / 'model',
                           {'detector': detector_variables, 'pose': pose.pose.variables},
                           {'detector': {'variant': 'fasterrcnn_resnet50_fpn_v2', 'num_classes': 2},
                            'pose': {'variant': 'hrnet_tiny', 'num_keypoints': 27, 'stride': 4,
                                     'keypoints': list(pose.keypoint_names)}})


@pytest.mark.slow  # Two passes of the Faster R-CNN on CPU and a detector train step: minutes.
def test_video_adaptation_end_to_end(adapt_model, tmp_path):
    """A whole adaptation on a short clip: DeepLabCut's file names before and after, its COCO
    pseudo-label files, an adapted model whose weights moved, and a clear error (nothing written as
    adapted) when no box passes the threshold."""
    import pandas as pd

    from superanimal_jax.adaptation.adapt import AdaptConfig, adapt_video
    from superanimal_jax.errors import AdaptationError

    from fakes import write_video

    video = write_video(tmp_path / 'clip.avi', 12)
    out = tmp_path / 'out'
    with pytest.raises(AdaptationError, match='no frame of'):
        adapt_video(video, adapt_model, out, AdaptConfig(bbox_threshold=1.01), max_individuals=2,
                    progress=False)
    assert not any('after_adapt' in p.name for p in out.iterdir())
    config = AdaptConfig(bbox_threshold=0.0, pseudo_threshold=0.0, detector_epochs=1, pose_epochs=1,
                         batch_size=2, workers=1)
    result = adapt_video(video, adapt_model, out, config, max_individuals=2, progress=False)
    base = 'clip_superanimal_topviewmouse_'
    assert result['before']['h5'].name == base + 'hrnet_w32_fasterrcnn_resnet50_fpn_v2.h5'
    adapted_base = base + 'snapshot-hrnet_w32-001_snapshot-fasterrcnn_resnet50_fpn_v2-001'
    assert result['after']['h5'].name == adapted_base + '.h5'
    assert result['after']['json'].name == adapted_base + '_after_adapt.json'
    assert (out / 'pseudo_clip' / 'annotations' / 'train.json').exists()
    train = json.loads(result['pseudo_labels']['train'].read_text())
    assert [image['file_name'] for image in train['images']] == ['frame_00000.png', 'frame_00010.png']
    before = pd.read_hdf(result['before']['h5'])
    after = pd.read_hdf(result['after']['h5'])
    assert before.shape == after.shape == (12, 2 * 27 * 3)
    assert not np.allclose(before.to_numpy(), after.to_numpy(), equal_nan=True)
    import superanimal_jax

    adapted = superanimal_jax.load(result['model'])
    source = superanimal_jax.load(adapt_model)
    moved = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    assert moved(adapted.pose.variables['params']['head']['deconv']['kernel'],
                 source.pose.variables['params']['head']['deconv']['kernel'])
    assert moved(adapted.detector.variables['params']['roi_heads']['box_predictor']['cls_score']['kernel'],
                 source.detector.variables['params']['roi_heads']['box_predictor']['cls_score']['kernel'])


@pytest.mark.slow  # Three adaptations (first passes of the Faster R-CNN on CPU): minutes.
def test_interrupted_adaptation_resumes_exactly(adapt_model, tmp_path, monkeypatch):
    """Stopped in the middle of the pose stage and run again: the first pass is reused, training
    resumes from its checkpoint, and the adapted model and results equal an uninterrupted run's
    bit for bit; a rerun with other training settings is refused."""
    import dataclasses

    import pandas as pd

    import superanimal_jax
    from superanimal_jax.adaptation import adapt
    from superanimal_jax.errors import AdaptationError

    from fakes import write_video

    video = write_video(tmp_path / 'clip.avi', 12)
    config = adapt.AdaptConfig(bbox_threshold=0.0, pseudo_threshold=0.0, detector_epochs=0, pose_epochs=2,
                               batch_size=2, workers=1)
    options = {'max_individuals': 2, 'progress': False}
    whole = adapt.adapt_video(video, adapt_model, tmp_path / 'whole', config, **options)

    train_items = adapt.train_items

    def stop_after_three_steps(*args, **kwargs):
        def stop(step, metrics):
            if step >= 3:
                raise KeyboardInterrupt
        return train_items(*args, callbacks=[stop], **kwargs)

    out = tmp_path / 'resumed'
    monkeypatch.setattr(adapt, 'train_items', stop_after_three_steps)
    with pytest.raises(KeyboardInterrupt):
        adapt.adapt_video(video, adapt_model, out, config, **options)
    monkeypatch.undo()
    assert not any('after_adapt' in p.name or 'snapshot' in p.name for p in out.iterdir())
    checkpoints = sorted(p.name for p in (out / 'pseudo_clip' / 'pose' / 'checkpoints').iterdir())
    assert checkpoints and not (out / 'pseudo_clip' / 'pose' / 'model').exists(), checkpoints
    first_pass = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}

    resumed = adapt.adapt_video(video, adapt_model, out, config, **options)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in first_pass} == first_pass
    pd.testing.assert_frame_equal(pd.read_hdf(resumed['after']['h5']), pd.read_hdf(whole['after']['h5']))
    ours = jax.tree_util.tree_leaves(superanimal_jax.load(resumed['model']).pose.variables)
    reference = jax.tree_util.tree_leaves(superanimal_jax.load(whole['model']).pose.variables)
    assert all(np.array_equal(a, b) for a, b in zip(ours, reference))

    assert not (out / 'pseudo_clip' / 'pose' / 'checkpoints').exists()  # Dropped once the stage finished.
    model = {p.name: p.stat().st_mtime_ns for p in resumed['model'].rglob('*')}
    again = adapt.adapt_video(video, adapt_model, out, config, **options)  # Trains nothing.
    assert again['model'] == resumed['model']
    assert {p.name: p.stat().st_mtime_ns for p in resumed['model'].rglob('*')} == model

    with pytest.raises(AdaptationError, match='other settings .*pose_epochs'):
        adapt.adapt_video(video, adapt_model, out, dataclasses.replace(config, pose_epochs=3), **options)


def test_a_stage_never_batches_more_than_its_items():
    """As DeepLabCut's DataLoader: 3 pseudo-labelled frames train at batch 3, not 8 with 5 blanks;
    rounded up to the devices of the mesh."""
    from superanimal_jax.adaptation.adapt import stage_batch_size

    assert stage_batch_size(8, 3) == 3
    assert stage_batch_size(8, 30) == 8
    assert stage_batch_size(8, 3, devices=4) == 4
    assert stage_batch_size(8, 0) == 1
