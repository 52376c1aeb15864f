"""Architecture facts and compiled-inference behaviour, on the tiny and the full variants."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.checkpoints.rules import flatten
from superanimal_jax.checkpoints.tables import pose_rules
from superanimal_jax.inference.pose import PoseEstimator
from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork, decode_heatmaps, variables_shape

GOLDENS = ('pose_manifest.json',)  # Files recording the versions the goldens were made with (conftest).


def test_w32_variables_match_the_reference_keys_not_ignored(pose_manifest):
    """Every reference tensor not on the ignore list has a variable of its size, and back."""
    config = POSE_VARIANTS['hrnet_w32']
    ignore = pose_rules(config).ignore
    kept = [(k, s) for k, s, _ in pose_manifest['manifest']
            if not any(re.fullmatch(i.pattern, k) for i in ignore)]
    ours = flatten(variables_shape(config))
    assert len(ours) == len(kept)
    assert sum(int(np.prod(s)) for _, s in kept) == sum(int(np.prod(v.shape)) for v in ours.values())


@pytest.mark.parametrize('shape', [(2, 64, 64, 3), (1, 96, 160, 3)])
def test_tiny_taps_have_hrnet_strides(shape):
    config = POSE_VARIANTS['hrnet_tiny']
    net = PoseNetwork(config)
    variables = net.init(jax.random.key(0), jnp.zeros(shape))
    taps = net.apply(variables, jnp.ones(shape))
    n, h, w, _ = shape
    assert taps['stem'].shape == (n, h // 4, w // 4, config.backbone.stem_width)
    for s, spec in enumerate(config.backbone.stages):
        branches = taps[f'stage{s + 2}']
        expected = spec.channels[:1] if s == len(config.backbone.stages) - 1 else spec.channels
        assert [b.shape for b in branches] == [(n, h // 4 // 2 ** b, w // 4 // 2 ** b, c)
                                              for b, c in enumerate(expected)]
    assert taps['heatmaps'].shape == (n, h // 4, w // 4, config.num_keypoints)


def test_every_parameter_receives_a_gradient():
    """No parameter is dead weight (the discarded fuse outputs are not built at all)."""
    config = POSE_VARIANTS['hrnet_tiny']
    net = PoseNetwork(config)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = net.init(jax.random.key(0), x)

    def loss(params):
        return jnp.sum(net.apply({**variables, 'params': params}, x)['heatmaps'] ** 2)

    grads = flatten(jax.grad(loss)(variables['params']))
    dead = [k for k, g in grads.items() if not np.any(np.asarray(g))]
    assert not dead, dead


def test_estimator_compiles_once_per_shape():
    config = POSE_VARIANTS['hrnet_tiny']
    variables = PoseNetwork(config).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    pose = PoseEstimator(config, variables)
    for _ in range(3):
        pose.heatmaps(np.zeros((2, 64, 64, 3), np.float32))
        pose.keypoints(jnp.zeros((2, 64, 64, 3), jnp.float32))
    assert pose._heatmaps._cache_size() == 1
    assert pose._keypoints._cache_size() == 1
    pose.heatmaps(np.zeros((3, 64, 64, 3), np.float32))  # A new shape compiles once more.
    assert pose._heatmaps._cache_size() == 2


def test_estimator_rejects_bad_crops():
    config = POSE_VARIANTS['hrnet_tiny']
    variables = PoseNetwork(config).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    pose = PoseEstimator(config, variables)
    with pytest.raises(ValueError, match='multiples of 32'):
        pose.heatmaps(np.zeros((1, 100, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
        pose.heatmaps(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match='normalize_crops'):
        pose.heatmaps(np.zeros((1, 64, 64, 3), np.uint8))


def test_decode_first_maximum_wins_like_torch_argmax():
    import torch

    heat = np.zeros((1, 4, 5, 3), np.float32)
    heat[0, 1, 3, 0] = heat[0, 2, 1, 0] = 0.7  # Tie: the row-major first, (y=1, x=3), wins.
    heat[0, :, :, 1] = -2.0
    heat[0, 3, 4, 1] = 1.5  # Single maximum above 1: score clipped to 1.
    heat[0, :, :, 2] = -2.0  # All equal and negative: index 0, score clipped to 0.
    ours = np.asarray(decode_heatmaps(jnp.asarray(heat), stride=4.0))
    index = torch.from_numpy(heat).reshape(1, 20, 3).argmax(dim=1)[0].numpy()
    np.testing.assert_array_equal(index, [1 * 5 + 3, 3 * 5 + 4, 0])
    expected = np.float32([[4 * 3 + 2, 4 * 1 + 2, 0.7], [4 * 4 + 2, 4 * 3 + 2, 1.0], [2, 2, 0.0]])
    np.testing.assert_array_equal(ours[0], expected)
