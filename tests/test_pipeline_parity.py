"""End to end against DeepLabCut 3.0.2's own SuperAnimal inference, same synthetic weights.

Goldens (``tests/reference/make_pipeline_fixtures.py``, see ``tests/fixtures/README.md``): DeepLabCut's
``video_inference_superanimal`` on an 8-frame openfield clip (its ``.h5`` and ``.json`` as it
wrote them) and its image API on four labeled openfield frames.  We run ``analyze_video`` /
``analyze_images`` on the same inputs and compare files and numbers: layout and index exactly,
keypoints (median and 99th percentile of the distance), likelihoods and boxes.
"""

import hashlib
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from superanimal_jax import Detector, PoseEstimator, SuperAnimalModel
from superanimal_jax.analysis.analyze import analyze_images, analyze_video
from superanimal_jax.checkpoints import synthetic
from superanimal_jax.checkpoints.convert import convert_pose_state
from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.models.pose import POSE_VARIANTS

from conftest import FIXTURES, run_reference_script

GOLDENS = ('pipeline/manifest.json',)  # Files recording the versions the goldens were made with (conftest).

GOLDEN = FIXTURES / 'pipeline'
IMAGES = FIXTURES.parents[2] / 'shared' / 'data' / 'openfield' / 'labeled-data' / 'm4s1'


@pytest.fixture(scope='module')
def manifest():
    return json.loads((GOLDEN / 'manifest.json').read_text())


@pytest.fixture(scope='module')
def model(pose_state, pose_manifest, detector_variables):
    config = POSE_VARIANTS['hrnet_w32']
    extra = synthetic.synthetic_state_dict(pose_manifest['seed_extra_manifest'], seed=pose_manifest['seed'])
    pose, _ = convert_pose_state(synthetic.to_seed_layout(pose_state, extra))  # pose_model.pth's layout.
    return SuperAnimalModel(pose=PoseEstimator(config, pose, keypoint_names=TOPVIEWMOUSE_KEYPOINTS),
                            metadata={}, detector=Detector(detector_variables))


@pytest.fixture(scope='module')
def analysed(model, tmp_path_factory):
    out = tmp_path_factory.mktemp('clip') / 'made' / 'by analyze'  # Missing: analyze_video makes it.
    return analyze_video(GOLDEN / 'openfield_clip.avi', model, out, batch_size=4, csv=True, progress=False)


def h5_layout(path) -> dict:
    """Every PyTables node of an h5: its type, user attributes and, for tables, the column types."""
    import tables

    layout = {}
    with tables.open_file(str(path)) as h5:
        for node in h5.walk_nodes('/'):
            attrs = node._v_attrs
            entry = {'type': type(node).__name__,
                     'attrs': {k: repr(attrs[k]) for k in sorted(attrs._v_attrnamesuser)}}
            if isinstance(node, tables.Table):
                entry['columns'] = {k: repr(v) for k, v in node.coldescrs.items()}
            layout[node._v_pathname] = entry
    return layout


def compare(ours: np.ndarray, ref: np.ndarray, what: str) -> dict:
    """Keypoints ``(..., K, 3)``: absent individuals must agree exactly (-1); for the rest the
    distance distribution and the largest likelihood difference."""
    present = ref[..., 2] != -1
    assert np.array_equal(present, ours[..., 2] != -1), f'{what}: different individuals present'
    distance = np.linalg.norm(ours[..., :2] - ref[..., :2], axis=-1)[present]
    stats = {'keypoints': int(present.sum()), 'median_px': float(np.median(distance)),
             'p99_px': float(np.percentile(distance, 99)), 'max_px': float(distance.max()),
             'identical': float(np.mean(distance == 0)),
             'likelihood': float(np.abs(ours[..., 2] - ref[..., 2])[present].max())}
    print(f"{what}: {stats['keypoints']} keypoints, distance median {stats['median_px']:.2e} px, "
          f"99th percentile {stats['p99_px']:.2e} px, max {stats['max_px']:.2f} px "
          f"({100 * stats['identical']:.1f}% identical); max likelihood difference {stats['likelihood']:.1e}")
    return stats


def test_clip_decodes_identically(manifest):
    capture = cv2.VideoCapture(str(GOLDEN / 'openfield_clip.avi'))
    digests = []
    while (frame := capture.read()[1]) is not None:
        digests.append(hashlib.sha256(frame.tobytes()).hexdigest())
    assert digests == manifest['clip']['decoded_bgr_sha256']


def test_video_h5_matches_deeplabcut(analysed, manifest):
    ref = pd.read_hdf(GOLDEN / 'clip_dlc.h5', 'df_with_missing')
    ours = pd.read_hdf(analysed['h5'], 'df_with_missing')
    assert analysed['h5'].name == manifest['produced'][0]  # Same file name as DeepLabCut's.
    assert ours.columns.equals(ref.columns) and ours.columns.names == ref.columns.names
    assert ours.index.equals(ref.index) and (ours.dtypes == ref.dtypes).all()
    shape = (len(ref), 10, len(TOPVIEWMOUSE_KEYPOINTS), 3)
    stats = compare(ours.to_numpy().reshape(shape), ref.to_numpy().reshape(shape), 'video h5')
    assert stats['median_px'] <= 0.01 and stats['p99_px'] <= 0.5 and stats['likelihood'] <= 1e-4


def test_video_h5_has_deeplabcuts_node_layout(analysed):
    """Our h5 has exactly the nodes, node attributes and column types of the h5 DeepLabCut wrote
    under pandas 2: the layout DeepLabCut's environment (pandas<3) reads.  pandas 3 alone writes
    no ``pandas_version`` and pandas 2 then fails to read the file."""
    ours, theirs = h5_layout(analysed['h5']), h5_layout(GOLDEN / 'clip_dlc.h5')
    assert ours.keys() == theirs.keys()
    for node in theirs:
        assert ours[node] == theirs[node], node
    assert "'0.15.2'" in theirs['/df_with_missing']['attrs']['pandas_version']


@pytest.mark.reference
def test_h5_files_open_in_deeplabcuts_environment(analysed, model, tmp_path):
    """Live: our video and image h5 files read by the reference environment's pandas 2.x equal the
    same files read here, and DeepLabCut's create_video draws our video h5."""
    images = analyze_images([IMAGES / n for n in ('img0015.png', 'img0045.png')], model, tmp_path / 'images',
                            batch_size=2, progress=False)
    assert len(images) == 2
    image_h5 = next((tmp_path / 'images').glob('*.h5'))
    run_reference_script('read_h5_in_deeplabcut.py', tmp_path / 'ref', '--h5', str(analysed['h5']),
                         str(image_h5), '--video', str(GOLDEN / 'openfield_clip.avi'),
                         '--labeled', str(analysed['h5']))
    report = json.loads((tmp_path / 'ref' / 'read.json').read_text())
    print(f"read by pandas {report['versions']['pandas']}, tables {report['versions']['tables']}")
    assert report['versions']['pandas'].startswith('2.')
    for h5 in (analysed['h5'], image_h5):
        ours = pd.read_hdf(h5, 'df_with_missing')
        with np.load(tmp_path / 'ref' / f'{h5.stem}.npz') as theirs:
            np.testing.assert_array_equal(theirs['values'], ours.to_numpy())
            assert theirs['values'].dtype == np.float32
            assert theirs['index'].tolist() == [str(i) for i in ours.index]
            assert json.loads(str(theirs['columns'])) == [list(c) for c in ours.columns]
            assert json.loads(str(theirs['names'])) == list(ours.columns.names)
    assert report['labeled_video']['frames'] == 8


def test_video_json_matches_deeplabcut(analysed, manifest):
    ref = json.loads((GOLDEN / 'clip_dlc.json').read_text())
    ours = json.loads(analysed['json'].read_text())
    assert analysed['json'].name == manifest['produced'][1]
    assert len(ours) == len(ref) and all(set(a) == set(b) for a, b in zip(ours, ref))
    boxes = np.array([f['bboxes'] for f in ours]), np.array([f['bboxes'] for f in ref])
    scores = np.array([f['bbox_scores'] for f in ours]), np.array([f['bbox_scores'] for f in ref])
    assert np.array_equal(scores[0] == -1, scores[1] == -1)
    print(f'json: max box difference {np.abs(boxes[0] - boxes[1]).max():.1e} px, '
          f'max box score difference {np.abs(scores[0] - scores[1]).max():.1e}')
    assert np.abs(boxes[0] - boxes[1]).max() <= 0.01 and np.abs(scores[0] - scores[1]).max() <= 1e-4


@pytest.mark.skipif(not IMAGES.is_dir(), reason='needs ../shared/data/openfield beside the checkout')
def test_images_match_deeplabcut(model, manifest):
    names = manifest['images']['names']
    results = analyze_images([IMAGES / n for n in names], model, batch_size=4, progress=False)
    with np.load(GOLDEN / 'images_dlc.npz') as ref:
        ours = np.stack([results[IMAGES / n]['keypoints'] for n in names])
        theirs = np.stack([ref[f'{n}/bodyparts'] for n in names])
        stats = compare(ours, theirs, 'images')
        boxes = np.stack([results[IMAGES / n]['boxes'] for n in names])
        assert np.abs(boxes - np.stack([ref[f'{n}/bboxes'] for n in names])).max() <= 0.01
    assert stats['median_px'] <= 0.01 and stats['p99_px'] <= 0.5 and stats['likelihood'] <= 1e-4
