"""Each layout transform and layer convention against the one PyTorch layer it mirrors."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from superanimal_jax.checkpoints.rules import conv_kernel, linear_kernel, transposed_conv_1x1_kernel
from superanimal_jax.models.pose import HeatmapHead
from superanimal_jax.nn.layers import batch_norm, conv, upsample_nearest

RNG = np.random.default_rng(0)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('kernel,stride,size', [(3, 2, 16), (3, 2, 15), (3, 1, 8), (1, 1, 8)])
def test_conv_padding_matches_torch(kernel, stride, size):
    x = RNG.standard_normal((2, size, size, 5)).astype(np.float32)
    ref = torch.nn.Conv2d(5, 7, kernel, stride, padding=kernel // 2, bias=False)
    layer = conv(7, kernel, stride, name='c')
    params = {'params': {'kernel': conv_kernel(ref.weight.detach().numpy())}}
    ours = layer.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(ours, nhwc(ref(nchw(x))), rtol=1e-5, atol=1e-5)


def test_same_padding_would_be_wrong():
    """The trap we avoid: 'SAME' pads (0, 1) for a stride-2 3x3 conv on an even input."""
    x = RNG.standard_normal((1, 8, 8, 2)).astype(np.float32)
    ref = torch.nn.Conv2d(2, 3, 3, 2, padding=1, bias=False)
    kernel = conv_kernel(ref.weight.detach().numpy())
    same = nn.Conv(3, (3, 3), (2, 2), padding='SAME', use_bias=False).apply({'params': {'kernel': kernel}}, x)
    assert np.abs(np.asarray(same) - nhwc(ref(nchw(x)))).max() > 1e-3


def test_batch_norm_uses_running_statistics_like_torch_eval():
    x = RNG.standard_normal((2, 4, 4, 6)).astype(np.float32) * 3 + 1
    ref = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(RNG.uniform(0.5, 1.5, 6).astype(np.float32)))
        ref.bias.copy_(torch.from_numpy(RNG.standard_normal(6).astype(np.float32)))
        ref.running_mean.copy_(torch.from_numpy(RNG.standard_normal(6).astype(np.float32)))
        ref.running_var.copy_(torch.from_numpy(RNG.uniform(0.5, 4, 6).astype(np.float32)))
    variables = {'params': {'scale': ref.weight.detach().numpy(), 'bias': ref.bias.detach().numpy()},
                 'batch_stats': {'mean': ref.running_mean.numpy(), 'var': ref.running_var.numpy()}}
    ours = batch_norm(name='bn').apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(ours, nhwc(ref(nchw(x))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_upsample_nearest_matches_torch(factor):
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    ref = torch.nn.Upsample(scale_factor=factor, mode='nearest')(nchw(x))
    np.testing.assert_array_equal(upsample_nearest(jnp.asarray(x), factor), nhwc(ref))


def test_transposed_1x1_conv_head_matches_torch():
    x = RNG.standard_normal((2, 8, 8, 32)).astype(np.float32)
    ref = torch.nn.ConvTranspose2d(32, 27, kernel_size=1, stride=1)
    variables = {'params': {'deconv': {'kernel': transposed_conv_1x1_kernel(ref.weight.detach().numpy()),
                                       'bias': ref.bias.detach().numpy()}}}
    ours = HeatmapHead(27).apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(ours, nhwc(ref(nchw(x))), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='1x1'):
        transposed_conv_1x1_kernel(np.zeros((32, 27, 3, 3), np.float32))


def test_linear_kernel_matches_torch():
    x = RNG.standard_normal((3, 10)).astype(np.float32)
    ref = torch.nn.Linear(10, 4)
    ours = nn.Dense(4).apply({'params': {'kernel': linear_kernel(ref.weight.detach().numpy()),
                                         'bias': ref.bias.detach().numpy()}}, x)
    np.testing.assert_allclose(ours, ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kernel,stride,size', [(3, 2, 17), (7, 2, 18), (1, 1, 9), (3, 1, 9)])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_per_tap_kernel_gradient_equals_lax(kernel, stride, size, dtype, monkeypatch):
    """The custom kernel gradient (used from FAST_KERNEL_GRADIENT_FROM output positions) equals
    lax's own convolution gradient, input gradient included, at each precision: float64 sums in
    float64 (a float32 accumulator there once made float64 gradients float32-accurate)."""
    import jax
    from jax import lax

    from superanimal_jax.nn import layers

    monkeypatch.setattr(layers, 'FAST_KERNEL_GRADIENT_FROM', 100)  # Small shapes take the per-tap path.
    pad = kernel // 2
    x = RNG.standard_normal((4, size, size, 6)).astype(dtype)
    w = RNG.standard_normal((kernel, kernel, 6, 5)).astype(dtype)
    g = RNG.standard_normal((4, -(-size // stride), -(-size // stride), 5)).astype(dtype)
    args = ((stride, stride), ((pad, pad), (pad, pad)))
    assert x.shape[0] * x.shape[1] * x.shape[2] // stride ** 2 >= layers.FAST_KERNEL_GRADIENT_FROM
    numbers = ('NHWC', 'HWIO', 'NHWC')

    def ours(x, w):
        return layers.conv_general_dilated(x, w, *args, dimension_numbers=numbers, precision='highest')

    def reference(x, w):
        return lax.conv_general_dilated(x, w, *args, dimension_numbers=numbers, precision='highest')

    with jax.enable_x64(dtype == np.float64):
        found = jax.vjp(ours, x, w)[1](g)
        expected = jax.vjp(reference, x, w)[1](g)
        exact = jax.vjp(reference, x.astype(np.float64), w.astype(np.float64))[1](g.astype(np.float64)) \
            if dtype == np.float64 else expected
        assert all(a.dtype == dtype for a in found)
        found, expected, exact = ([np.asarray(a, np.float64) for a in t] for t in (found, expected, exact))
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    for a, b, c in zip(found, expected, exact):
        scale = np.abs(c).max()
        assert np.abs(a - c).max() <= tolerance * scale
        assert np.abs(b - c).max() <= tolerance * scale
