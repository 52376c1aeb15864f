"""HRNet backbone as DeepLabCut builds it for SuperAnimal models (timm's ``hrnet_w32``, features-only).

Module names mirror timm's; the last stage's last module computes only output 0 (all DeepLabCut uses).
Parity with DeepLabCut/timm: docs/parity/hrnet.md.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.nn.layers import ConvBN, Dtype, batch_norm, conv, upsample_nearest
from superanimal_jax.nn.resnet import BasicBlock, Bottleneck


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One HRNet stage: ``num_modules`` modules of ``len(channels)`` parallel branches."""

    num_modules: int
    num_blocks: tuple[int, ...]
    channels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
    """An HRNet variant (timm's ``cfg_cls``, features-only, stem + Bottleneck stage 1)."""

    stem_width: int = 64
    stage1_blocks: int = 4
    stage1_planes: int = 64  # Bottleneck planes; the output has 4x as many channels.
    stages: tuple[StageSpec, ...] = (
        StageSpec(1, (4, 4), (32, 64)),
        StageSpec(4, (4, 4, 4), (32, 64, 128)),
        StageSpec(3, (4, 4, 4, 4), (32, 64, 128, 256)),
    )

    @property
    def out_channels(self) -> int:
        return self.stages[-1].channels[0]

    stride = 4


HRNET_W32 = HRNetConfig()
# Same topology, ~90k parameters: for fast unit tests.
HRNET_TINY = HRNetConfig(
    stem_width=8, stage1_blocks=1, stage1_planes=4,
    stages=(StageSpec(1, (1, 1), (4, 8)), StageSpec(2, (1, 1, 1), (4, 8, 16)),
            StageSpec(2, (1, 1, 1, 1), (4, 8, 16, 32))))


class Blocks(nn.Module):
    """``num_blocks`` residual blocks named ``'0'`` ...: ``layer1`` (Bottlenecks, the first with a
    projection shortcut; ``channels`` counts planes) or one branch of a module (BasicBlocks)."""

    num_blocks: int
    channels: int
    bottleneck: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.num_blocks):
            if self.bottleneck:
                x = Bottleneck(self.channels, downsample=k == 0, name=str(k), dtype=self.dtype)(x)
            else:
                x = BasicBlock(self.channels, name=str(k), dtype=self.dtype)(x)
        return x


class Branches(nn.Module):
    """timm's ``branches``: one :class:`Blocks` of BasicBlocks per resolution, named ``'0'`` ..."""

    num_blocks: tuple[int, ...]
    channels: tuple[int, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        return [Blocks(n, c, name=str(b), dtype=self.dtype)(x)
                for b, (n, c, x) in enumerate(zip(self.num_blocks, self.channels, xs))]


class Downsample(nn.Module):
    """Stride-2 3x3 ConvBN+ReLU steps named ``'0'`` ...; only the last changes the width.

    A fuse path to a lower-resolution output has no ReLU after its last step
    (``final_relu=False``); a transition to a new branch has one.
    """

    in_channels: int
    out_channels: int
    steps: int
    final_relu: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.steps):
            last = k == self.steps - 1
            x = ConvBN(self.out_channels if last else self.in_channels, 3, stride=2,
                       relu=self.final_relu or not last, name=str(k), dtype=self.dtype)(x)
        return x


class FuseOutput(nn.Module):
    """Output ``i`` of a module: ``ReLU(sum_j f_ij(x_j))``, summed left to right as timm does."""

    index: int
    channels: tuple[int, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        i, d = self.index, self.dtype
        y = None
        for j, x in enumerate(xs):
            if j > i:  # Lower resolution: 1x1 ConvBN then nearest upsampling (no ReLU).
                x = upsample_nearest(
                    ConvBN(self.channels[i], 1, relu=False, name=str(j), dtype=d)(x), 2 ** (j - i))
            elif j < i:
                x = Downsample(self.channels[j], self.channels[i], i - j, final_relu=False,
                               name=str(j), dtype=d)(x)
            y = x if y is None else y + x
        return nn.relu(y)


class FuseLayers(nn.Module):
    """timm's ``fuse_layers``: outputs ``0 .. num_outputs - 1`` (:class:`FuseOutput`), named ``'0'`` ..."""

    channels: tuple[int, ...]
    num_outputs: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        return [FuseOutput(i, self.channels, name=str(i), dtype=self.dtype)(xs)
                for i in range(self.num_outputs)]


class HighResolutionModule(nn.Module):
    """timm's ``HighResolutionModule``: ``branches`` then ``fuse_layers``; returns a list of maps."""

    num_blocks: tuple[int, ...]
    channels: tuple[int, ...]
    num_outputs: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        xs = Branches(self.num_blocks, self.channels, name='branches', dtype=self.dtype)(xs)
        return FuseLayers(self.channels, self.num_outputs, name='fuse_layers', dtype=self.dtype)(xs)


class Stage(nn.Module):
    """timm's ``stageN``: ``spec.num_modules`` modules named ``'0'`` ...; if ``last``, the final one
    returns only output 0."""

    spec: StageSpec
    last: bool = False  # The backbone's last stage: its last module only produces output 0.
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        n = len(self.spec.channels)
        for m in range(self.spec.num_modules):
            outputs = 1 if self.last and m == self.spec.num_modules - 1 else n
            xs = HighResolutionModule(self.spec.num_blocks, self.spec.channels, outputs,
                                      name=str(m), dtype=self.dtype)(xs)
        return xs


class Transition(nn.Module):
    """timm's ``_make_transition_layer`` and the way ``stages()`` applies it.

    Existing branches pass through unchanged unless their width changes (a 3x3 ConvBN+ReLU);
    every new branch is derived from the previous stage's lowest-resolution output.
    """

    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence):
        n_in = len(self.in_channels)
        ys = []
        for i, c in enumerate(self.out_channels):
            if i < n_in and c == self.in_channels[i]:
                ys.append(xs[i])
            elif i < n_in:
                ys.append(ConvBN(c, 3, name=str(i), dtype=self.dtype)(xs[-1]))
            else:
                ys.append(Downsample(self.in_channels[-1], c, i + 1 - n_in, final_relu=True,
                                     name=str(i), dtype=self.dtype)(xs[-1]))
        return ys


class HRNet(nn.Module):
    """Features-only HRNet returning named taps; ``'features'`` is branch 0 at stride 4."""

    config: HRNetConfig = HRNET_W32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, d = self.config, self.dtype
        taps = {}
        x = nn.relu(batch_norm(name='bn1', dtype=d)(conv(cfg.stem_width, 3, 2, name='conv1', dtype=d)(x)))
        x = nn.relu(batch_norm(name='bn2', dtype=d)(conv(cfg.stem_width, 3, 2, name='conv2', dtype=d)(x)))
        taps['stem'] = x
        x = Blocks(cfg.stage1_blocks, cfg.stage1_planes, bottleneck=True, name='layer1', dtype=d)(x)
        taps['layer1'] = x
        xs, prev = [x], (4 * cfg.stage1_planes,)
        for s, spec in enumerate(cfg.stages):
            xs = Transition(prev, spec.channels, name=f'transition{s + 1}', dtype=d)(xs)
            xs = Stage(spec, last=s == len(cfg.stages) - 1, name=f'stage{s + 2}', dtype=d)(xs)
            taps[f'stage{s + 2}'] = xs
            prev = spec.channels
        taps['features'] = xs[0]
        return taps
