"""How programs compile: the persistent cache (default, environment, flag, off), the per-model
XLA:CPU options, the precision policy and the pose model's piece sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax import compilation
from superanimal_jax.inference.topdown import keypoints_in_frames, pose_pieces

import fakes

# A fresh Python that imports the package, compiles one small program and reports the cache.
PROBE = """
import json, sys
import jax, jax.numpy as jnp
import superanimal_jax
if len(sys.argv) > 1:
    from superanimal_jax import cli
    cli.main(['analyze', 'missing.mp4', '--compilation-cache', sys.argv[1]])
jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({'enabled': jax.config.jax_enable_compilation_cache,
                  'dir': jax.config.jax_compilation_cache_dir}))
"""


def probe(tmp_path, env: dict, *args: str) -> tuple[dict, list[str]]:
    """Run :data:`PROBE` with ``env`` on top of ours, without the test run's own cache."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(('JAX_COMPILATION', 'SUPERANIMAL_JAX'))}
    environ.update(HOME=str(tmp_path / 'home'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', **env)
    environ.pop('XDG_CACHE_HOME', None)
    done = subprocess.run([sys.executable, '-c', PROBE, *args], env=environ, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.splitlines()


def cached_files(folder) -> list:
    return [p for p in folder.rglob('*') if p.is_file()] if folder.exists() else []


def test_the_package_keeps_compiled_programs_under_the_users_cache_by_default(tmp_path):
    report, _ = probe(tmp_path, {})
    folder = tmp_path / 'home' / '.cache' / 'superanimal-jax' / 'jax'
    assert report == {'enabled': True, 'dir': str(folder)}
    assert cached_files(folder), 'nothing was written to the cache'


def test_the_environment_moves_or_switches_off_the_cache(tmp_path):
    report, _ = probe(tmp_path, {'SUPERANIMAL_JAX_CACHE': str(tmp_path / 'mine')})
    assert report['dir'] == str(tmp_path / 'mine') and cached_files(tmp_path / 'mine')
    report, _ = probe(tmp_path, {'SUPERANIMAL_JAX_CACHE': 'off'})
    assert report['enabled'] is False
    assert not cached_files(tmp_path / 'home')


def test_a_cache_configured_for_jax_itself_is_kept(tmp_path):
    report, _ = probe(tmp_path, {'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax-own')})
    assert report == {'enabled': True, 'dir': str(tmp_path / 'jax-own')}
    assert cached_files(tmp_path / 'jax-own') and not cached_files(tmp_path / 'home')


@pytest.mark.parametrize('setting', ['folder', 'off'])
def test_the_command_line_flag_overrides_the_default(tmp_path, setting):
    value = str(tmp_path / 'flagged') if setting == 'folder' else 'off'
    report, stderr = probe(tmp_path, {}, value)
    assert any('missing.mp4: no such file' in line for line in stderr)  # The command itself ran.
    if setting == 'folder':
        assert report == {'enabled': True, 'dir': value} and cached_files(tmp_path / 'flagged')
    else:
        assert report['enabled'] is False


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(ValueError, match='cannot use .*file/cache as the compilation cache'):
        compilation.use_compilation_cache(blocker / 'cache')


def test_cpu_options_are_per_model_on_cpu_only(monkeypatch):
    cpu, gpu = types.SimpleNamespace(platform='cpu'), types.SimpleNamespace(platform='gpu')
    assert compilation.cpu_options('pose', [cpu]) == {
        'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                                                'LIBRARY_FUSION_TYPE_ELTWISE'}
    assert compilation.cpu_options('detector', [cpu]) == {'xla_cpu_experimental_ynn_fusion_type': ''}
    assert compilation.cpu_options('pose', [gpu]) == {}
    monkeypatch.setenv('SUPERANIMAL_JAX_CPU_OPTIONS', 'off')
    assert compilation.cpu_options('pose', [cpu]) == {}


def library_calls(jitted, *args) -> int:
    """How many YNNPACK library calls XLA compiled ``jitted`` into."""
    return jitted.lower(*args).compile().as_text().count('"__ynn_fusion"')


def test_the_pose_program_carries_its_options_and_precision(monkeypatch):
    pose = fakes.tiny_pose()
    x = jnp.zeros((2, 64, 64, 3))
    plain = jax.jit(lambda v, x: pose.network.apply(v, x)['heatmaps'])
    # Element-wise work joins the library (on this tiny network, only a few of its ops).
    assert library_calls(pose._heatmaps, pose.variables, x) > library_calls(plain, pose.variables, x)
    monkeypatch.setenv('SUPERANIMAL_JAX_CPU_OPTIONS', 'off')
    default = fakes.tiny_pose()
    assert library_calls(default._heatmaps, default.variables, x) == library_calls(plain, pose.variables, x)
    lowered = pose._heatmaps.lower(pose.variables, x).as_text()
    assert lowered.count('precision HIGHEST') >= 2 and 'precision DEFAULT' not in lowered
    fast = fakes.tiny_pose(precision='default')
    assert 'precision HIGHEST' not in fast._heatmaps.lower(fast.variables, x).as_text()


def test_precision_defaults_follow_the_dtype_and_bad_values_are_refused():
    assert compilation.resolve_precision(None, jnp.float32) == 'highest'
    assert compilation.resolve_precision(None, jnp.bfloat16) == 'default'
    assert compilation.resolve_precision('default', jnp.float32) == 'default'
    with pytest.raises(ValueError, match="precision must be one of highest, high, default, got 'fast'"):
        fakes.tiny_pose(precision='fast')


def test_pose_pieces_pad_little_with_few_shapes():
    assert pose_pieces(0, 32) == []
    assert pose_pieces(1, 32) == [1]
    assert pose_pieces(8, 32) == [8]
    assert pose_pieces(24, 32) == [16, 8]  # Three mice at batch 8: no padding.
    assert pose_pieces(13, 32) == [8, 8]
    assert pose_pieces(70, 32) == [32, 32, 4, 2]
    assert pose_pieces(20, 24) == [16, 4]  # A chunk that is not a power of two.
    assert pose_pieces(23, 24) == [16, 8]
    shapes = set()
    for n in range(1, 200):
        pieces = pose_pieces(n, 32)
        rest = n % 32
        assert pieces[:n // 32] == [32] * (n // 32) and len(pieces) - n // 32 <= 2
        assert sum(pieces) - n < max(rest, 1) / 3
        shapes.update(pieces)
    assert shapes == {1, 2, 4, 8, 16, 32}
    with pytest.raises(ValueError, match='chunk must be >= 1'):
        pose_pieces(3, 0)


class RecordingPose:
    """``keypoints_uint8`` of a crop: its mean brightness at every keypoint; records batch sizes."""

    def __init__(self):
        self.sizes = []

    def keypoints_uint8(self, crops):
        self.sizes.append(len(crops))
        value = np.asarray(crops, np.float32).mean(axis=(1, 2, 3))
        return np.repeat(np.stack([value, value, value / 255], -1)[:, None], 3, axis=1)


def test_keypoints_in_frames_runs_pieces_and_keeps_every_crop():
    frames = np.stack([fakes.frame(i) for i in range(4)])
    owners = np.array([0, 1, 1, 2, 3, 3, 3])
    boxes = np.array([[5 + i, 4 + i, 30, 20] for i in range(7)], np.float32)
    pose = RecordingPose()
    pieced = keypoints_in_frames(pose, frames, owners, boxes, crop_size=(64, 64), chunk=8)
    assert pose.sizes == [4, 4]  # 7 crops: 4, then 3 padded to 4 (the padding's results dropped).
    one = RecordingPose()
    alone = np.concatenate([keypoints_in_frames(one, frames, owners[i:i + 1], boxes[i:i + 1],
                                                crop_size=(64, 64), chunk=4) for i in range(7)])
    assert one.sizes == [1] * 7
    np.testing.assert_array_equal(pieced, alone)


def test_on_cpu_the_precisions_compute_the_same_heatmaps():
    """README, "Performance": on CPU ``default`` and ``highest`` are one computation."""
    crops = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    highest = np.asarray(fakes.tiny_pose(precision='highest').heatmaps(crops))
    default = np.asarray(fakes.tiny_pose(precision='default').heatmaps(crops))
    np.testing.assert_array_equal(highest, default)
