"""Where float32 puts the floor for the DLCRNet (PoseResnet) taps, and how much of it is the
convolution kernels' accumulation order:

    .venv/bin/python benchmarks/dlcrnet_float32_floor.py

For the golden inputs (a real openfield crop, a random input) and weights, each tap's relative
max-abs distance from our float64 forward of: TensorFlow's float32 (the goldens), ours in float32
as shipped (XLA's convolutions), and ours in float32 with every backbone convolution computed
another valid way (patches + one matrix product: the same sums, another order).  The ratios
ours / TF show which rounding pattern each kernel happens to produce.
"""

from __future__ import annotations

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

from test_dlcrnet import convert, golden_state, load  # noqa: E402

import superanimal_jax.nn.slim_resnet as slim_resnet  # noqa: E402
from superanimal_jax.models.pose_resnet import PoseResnet  # noqa: E402

TAPS = ('block1', 'block2', 'block3', 'block4', 'part_pred')


class PatchConv(nn.Conv):
    """``nn.Conv`` (no bias) computed as image patches times the flattened kernel."""

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        shape = (kh, kw, x.shape[-1], self.features)
        kernel = self.param('kernel', nn.initializers.zeros, shape, jnp.float32)
        strides = self.strides if isinstance(self.strides, tuple) else (self.strides,) * 2
        rate = self.kernel_dilation
        dilation = rate if isinstance(rate, tuple) else (rate, rate)
        patches = lax.conv_general_dilated_patches(x, (kh, kw), strides, self.padding, rhs_dilation=dilation,
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        flat = kernel.transpose(2, 0, 1, 3).reshape(-1, self.features)  # Patches are (C, kh, kw).
        return jnp.einsum('nhwk,kf->nhwf', patches, flat)


def distances(variables, golden, every: int, conv=None) -> dict[str, tuple[float, float]]:
    """``{input/tap: (TF float32, ours float32)}`` distances from our float64 forward."""
    original = slim_resnet.nn.Conv
    out = {}
    for name in ('real', 'random'):
        x = golden[f'inputs/{name}']
        try:
            if conv is not None:
                slim_resnet.nn.Conv = conv
            ours32 = jax.jit(PoseResnet().apply)(variables, x)
        finally:
            slim_resnet.nn.Conv = original
        with jax.enable_x64(True):
            as64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            ours64 = jax.jit(PoseResnet(dtype=jnp.float64).apply)(as64, np.asarray(x, np.float64))
            ours64 = {k: np.asarray(v) for k, v in ours64.items()}
        for tap in TAPS:
            keep = slice(None, None, every if tap.startswith('block') else 1)
            exact = ours64[tap][..., keep]
            scale = np.abs(exact).max()
            out[f'{name}/{tap}'] = (float(np.abs(golden[f'{name}/{tap}'] - exact).max() / scale),
                                    float(np.abs(np.asarray(ours32[tap])[..., keep] - exact).max() / scale))
    return out


def main() -> None:
    manifest, golden = load()
    variables, _ = convert(golden_state())
    shipped = distances(variables, golden, manifest['channels_every'])
    patches = distances(variables, golden, manifest['channels_every'], conv=PatchConv)
    print(f"{'tap':18} {'TF f32':>9} {'ours':>9} {'ratio':>6} {'patches':>9} {'ratio':>6}")
    for key, (tf, ours) in shipped.items():
        other = patches[key][1]
        print(f'{key:18} {tf:9.2e} {ours:9.2e} {ours / tf:6.2f} {other:9.2e} {other / tf:6.2f}')


if __name__ == '__main__':
    main()
