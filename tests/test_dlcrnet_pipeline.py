"""The DLCRNet release run as DeepLabCut's SuperAnimal TF video path (``video_inference``): our
``analyze`` against the h5 DeepLabCut 3.0.2 wrote for the 8-frame openfield clip with the same
weights (goldens: ``tests/reference/make_dlcrnet_fixtures.py``, ``fixtures/dlcrnet_clip/``).

The weights are the synthetic TF variables of ``dlcrnet_manifest.json`` with the BatchNorm
statistics and head gains of ``dlcrnet_overrides.npz`` (calibrated on openfield frames so that
score maps have a handful of peaks), regenerated here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_dlcrnet import golden_state

import superanimal_jax
from superanimal_jax.analysis.analyze import analyze_video
from superanimal_jax.checkpoints import model_dir
from superanimal_jax.checkpoints.convert import convert_dlcrnet_state, dlcrnet_config, dlcrnet_section
from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.errors import ConversionError, ModelDirError
from superanimal_jax.inference.dlcrnet import confidence_of, frame_names, merge_scales
from superanimal_jax.io.video import VideoReader
from superanimal_jax.models.pose_resnet import thousandths
from superanimal_jax.transforms.scales import resize_to_height

from conftest import FIXTURES

GOLDENS = ('dlcrnet_manifest.json',)  # The versions the goldens were made with (conftest).
CLIP = FIXTURES / 'pipeline' / 'openfield_clip.avi'
# Keypoints (px) and likelihoods may differ where float32 rounding in the network moves a value
# across a 3-decimal rounding boundary (DeepLabCut rounds positions and scores to 3 decimals).
MEDIAN_PX, P99_PX, LIKELIHOOD = 0.0, 0.01, 0.0011


@pytest.fixture(scope='module')
def manifest():
    return json.loads((FIXTURES / 'dlcrnet_manifest.json').read_text())


@pytest.fixture(scope='module')
def model_path(tmp_path_factory):
    """A model directory holding the DLCRNet alone, written as ``convert --dlcrnet`` writes it."""
    variables, config, report = convert_dlcrnet_state(golden_state())
    section = dlcrnet_section(config, 'snapshot-0', source={'file': 'regenerated', **report})
    path = tmp_path_factory.mktemp('dlcrnet') / 'model'
    return model_dir.write(path, {'dlcrnet': variables}, {'dlcrnet': section})


@pytest.fixture(scope='module')
def model(model_path):
    return superanimal_jax.load(model_path)


def sha(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def clip_frames() -> np.ndarray:
    return np.concatenate([b.frames[:b.count] for b in VideoReader(CLIP).batches(8)])


def compare(ours: pd.DataFrame, ref: pd.DataFrame, label: str) -> dict[str, float]:
    """Same columns, index and missing values; keypoint error in px and likelihood difference."""
    assert ours.columns.equals(ref.columns), label
    assert list(ours.index) == list(ref.index), label
    a = ours.to_numpy(np.float64).reshape(len(ours), -1, 3)
    b = ref.to_numpy(np.float64).reshape(len(ref), -1, 3)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f'{label}: missing values differ')
    present = ~np.isnan(b[..., 0])
    error = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)[present]
    figures = {'keypoints': int(present.sum()), 'median_px': float(np.median(error)),
               'p99_px': float(np.percentile(error, 99)), 'max_px': float(error.max()),
               'likelihood_max_diff': float(np.nanmax(np.abs(a[..., 2] - b[..., 2])))}
    print(f'{label}: {figures}')
    assert figures['median_px'] <= MEDIAN_PX and figures['p99_px'] <= P99_PX, figures
    assert figures['likelihood_max_diff'] <= LIKELIHOOD, figures
    return figures


def test_frames_and_scales_are_deeplabcuts(manifest):
    """Our decoded clip and its resized frames (OpenCV bicubic at imgaug's keep-aspect sizes) are
    the very arrays DeepLabCut's path fed its network (sha256 of each)."""
    frames = clip_frames()
    assert [sha(f) for f in frames] == manifest['clip']['frames']
    run = manifest['clip']['runs']['scales3']
    for i, scale in enumerate(run['scales']):
        resized = resize_to_height(frames, scale)
        assert list(resized.shape[1:]) == run['shapes'][i]
        assert [sha(r) for r in resized] == [hashes[i] for hashes in run['resized']], scale


def test_analyze_matches_video_inference_at_default_scales(tmp_path, model, manifest):
    """``analyze_video`` at DeepLabCut's default scales ``[h-50, h, h+50]``: file name, columns,
    index as DeepLabCut's, keypoints and likelihoods as measured."""
    run = manifest['clip']['runs']['scales3']
    paths = analyze_video(CLIP, model, tmp_path, progress=False)
    assert paths['h5'].name == run['h5']  # <video>DLC_snapshot-0.h5
    compare(pd.read_hdf(paths['h5'], 'df_with_missing'),
            pd.read_hdf(FIXTURES / 'dlcrnet_clip' / 'scales3.h5', 'df_with_missing'), 'scales3')


def test_cli_analyze_at_one_scale(tmp_path, model_path, manifest):
    """``superanimal-jax analyze VIDEO --model DIR --scales H`` picks the DLCRNet (the directory's
    only network) and writes DeepLabCut's single-scale result (and the csv, labeled video and
    trajectory plot when asked)."""
    run = manifest['clip']['runs']['scale1']
    subprocess.run([sys.executable, '-m', 'superanimal_jax.cli', 'analyze', str(CLIP), '--model',
                    str(model_path), '--out', str(tmp_path), '--scales', *map(str, run['scales']), '--csv',
                    '--labeled-video', '--plot-trajectories'], check=True)
    ours = pd.read_hdf(tmp_path / run['h5'], 'df_with_missing')
    compare(ours, pd.read_hdf(FIXTURES / 'dlcrnet_clip' / 'scale1.h5', 'df_with_missing'), 'scale1 (CLI)')
    csv = pd.read_csv(tmp_path / run['h5'].replace('.h5', '.csv'), header=[0, 1, 2], index_col=0)
    np.testing.assert_array_equal(csv.to_numpy(), ours.to_numpy())
    stem = run['h5'][:-len('.h5')]
    assert (tmp_path / f'{stem}_trajectories.png').stat().st_size > 0
    assert VideoReader(tmp_path / f'{stem}_labeled.mp4').header_frames == 8


def test_predict_in_memory_with_padded_batches(model, manifest):
    """``model.predict(frames)`` (batches of 3: the last one padded) equals DeepLabCut's output."""
    run = manifest['clip']['runs']['scale1']
    keypoints = model.predict(clip_frames(), batch_size=3, scales=run['scales'])['keypoints']
    ref = pd.read_hdf(FIXTURES / 'dlcrnet_clip' / 'scale1.h5', 'df_with_missing')
    ours = pd.DataFrame(keypoints.reshape(len(keypoints), -1), index=ref.index, columns=ref.columns)
    compare(ours, ref, 'scale1 (predict)')


def test_scores_round_as_numpy():
    """DeepLabCut rounds scores with ``numpy.round(x, 3)`` on float32; under ``jit`` a division by
    1000 would be a multiplication by its reciprocal, so the device keeps the numerators."""
    import jax

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1, 200_000), (np.arange(1000) + 0.5) / 1000]).astype(np.float32)
    np.testing.assert_array_equal(confidence_of(jax.jit(thousandths)(x)), np.round(x, 3))


def test_frame_names_follow_deeplabcut():
    """``frame`` + the index zero-padded to ``ceil(log10(total frames))`` digits."""
    assert frame_names(3, 8) == ['frame0', 'frame1', 'frame2']
    assert frame_names(2, 2330, start=8) == ['frame0008', 'frame0009']
    assert frame_names(1, 100, start=99) == ['frame99']
    assert frame_names(1, 1) == ['frame0']


def test_merge_rules():
    """The cases DeepLabCut's merge distinguishes: one scale (a frame without peaks has likelihood 0,
    a joint without a peak NaN); several (low confidence and off-direction predictions masked)."""
    xy = np.array([[[[10.0, 20.0], [5.0, 5.0]]]])  # 1 scale, 1 frame, 2 joints.
    confidence = np.array([[[0.5, 0.0]]], np.float32)
    out = merge_scales(xy, confidence, np.array([[[True, False]]]))
    np.testing.assert_array_equal(out[0, 0], [10.0, 20.0, 0.5])
    assert np.isnan(out[0, 1]).all()
    empty = merge_scales(xy, confidence, np.zeros((1, 1, 2), bool))
    assert np.isnan(empty[..., :2]).all() and (empty[..., 2] == 0).all()
    # Three scales: the second is below the confidence cut-off, the third points elsewhere.
    xy = np.array([[[[10.0, 20.0]]], [[[11.0, 21.0]]], [[[20.0, 5.0]]]])
    confidence = np.array([[[0.9]], [[0.05]], [[0.8]]], np.float32)
    out = merge_scales(xy, confidence, np.ones((3, 1, 1), bool))
    np.testing.assert_array_equal(out[0, 0], [10.0, 20.0, np.float32(0.9)])
    out = merge_scales(xy, np.full((3, 1, 1), 0.05, np.float32), np.ones((3, 1, 1), bool))
    assert np.isnan(out).all()


def test_network_is_read_from_the_names():
    state = golden_state()
    config = dlcrnet_config(state)
    assert (config.num_joints, config.locref, config.num_limbs) == (27, True, 0)
    with pytest.raises(ConversionError, match='DLCRNet_ms5'):
        dlcrnet_config({**state, 'decoder_filters/decoder_parallel_1/weights': np.zeros((1, 1, 2, 2))})
    renamed = {k.replace('resnet_v1_50', 'resnet_v1_101'): v for k, v in state.items()}
    with pytest.raises(ConversionError, match='resnet_v1_101'):
        dlcrnet_config(renamed)
    from superanimal_jax.checkpoints.tf_checkpoint import read_tf_checkpoint

    with pytest.raises(ConversionError, match='not a DeepLabCut PoseResnet-50 checkpoint'):
        dlcrnet_config({k: v for k, v in state.items() if not k.startswith('pose/part_pred/')})
    # The reader's small test bundle has PoseResnet-like names, but not the network's variables.
    small, _ = read_tf_checkpoint(FIXTURES / 'tf_checkpoint' / 'snapshot-7.index')
    with pytest.raises(ConversionError, match='extra/bool'):
        convert_dlcrnet_state(small, source='snapshot-7')


def test_network_choice(model, tmp_path):
    assert model.network() == 'dlcrnet' and model.dlcrnet.scorer == 'DLC_snapshot-0'
    assert model.keypoint_names == TOPVIEWMOUSE_KEYPOINTS
    with pytest.raises(ModelDirError, match='needs a pose model and a detector'):
        model.network('topdown')
    with pytest.raises(ValueError, match='unknown network'):
        model.network('hrnet')
    with pytest.raises(ValueError, match='positive integers'):
        model.predict(np.zeros((1, 64, 64, 3), np.uint8), scales=[0])


@pytest.mark.reference
def test_h5_opens_in_deeplabcuts_environment(tmp_path, model):
    """Our DLCRNet h5, read by DeepLabCut's own environment (pandas 2): the same values, row names
    and columns as read here; DeepLabCut's ``create_video`` draws it."""
    from conftest import run_reference_script

    paths = analyze_video(CLIP, model, tmp_path / 'ours', scales=[480], progress=False)
    run_reference_script('read_h5_in_deeplabcut.py', tmp_path / 'ref', '--h5', str(paths['h5']),
                         '--video', str(CLIP), '--labeled', str(paths['h5']))
    report = json.loads((tmp_path / 'ref' / 'read.json').read_text())
    assert report['versions']['pandas'].startswith('2.') and report['labeled_video']['frames'] == 8
    ours = pd.read_hdf(paths['h5'], 'df_with_missing')
    with np.load(tmp_path / 'ref' / f"{paths['h5'].stem}.npz") as theirs:
        np.testing.assert_array_equal(theirs['values'], ours.to_numpy())
        assert theirs['values'].dtype == np.float64
        assert theirs['index'].tolist() == list(ours.index)
        assert json.loads(str(theirs['columns'])) == [list(c) for c in ours.columns]
        assert json.loads(str(theirs['names'])) == list(ours.columns.names)
