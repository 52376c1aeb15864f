"""The detector's preprocessing against torchvision and DeepLabCut, bit for bit.

Goldens: ``tests/reference/make_resize_fixtures.py`` (DeepLabCut 3.0.2 + torchvision 0.29 reference env).
The bilinear resize is also compared live with ``torch.nn.functional.interpolate``.
"""

import hashlib
import json
from fractions import Fraction

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from superanimal_jax.ops import float32
from superanimal_jax.transforms import detector_input as resize

from conftest import FIXTURES

GOLDENS = ('detector_resize.npz',)  # Files recording the versions the goldens were made with (conftest).

# Frame sizes the spec (detector_and_pipeline.md, section 2.1) lists, for torchvision >= 0.16.
SPEC_SIZES = {(480, 640): (800, 1066), (600, 800): (800, 1066), (720, 1280): (749, 1333),
              (1080, 1920): (749, 1333), (2160, 3840): (749, 1333), (1024, 1024): (800, 800),
              (768, 1024): (800, 1066), (960, 1280): (800, 1066), (576, 720): (800, 1000),
              (486, 720): (800, 1185)}


resize_jit = jax.jit(resize.resize_bilinear, static_argnums=(1, 2, 3, 4))
preprocess_jit = jax.jit(resize.preprocess, static_argnums=(1, 2, 3),
                         static_argnames=("torch_version", "kernel", "index_fma"))


@pytest.fixture(scope='module')
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / 'detector_resize.npz') as g:
        return dict(g)


def sha256(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def assert_bits_equal(ours, theirs, what: str) -> None:
    """Equal bit patterns (so also -0 vs +0); on failure report the count and max-abs error."""
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = ours.view(np.uint32) != theirs.view(np.uint32)
    if diff.any():
        where = np.unravel_index(np.argmax(np.abs(ours - theirs)), ours.shape)
        pytest.fail(f'{what}: {diff.sum()} of {diff.size} values differ, max-abs '
                    f'{np.abs(ours - theirs).max():.3g} at {where}')


# ------------------------------------------------------------------------------------------
# Sizes, normalisation, box rescaling (goldens)

def test_resized_and_padded_sizes_match_torchvision(golden):
    frames, resized, padded = golden['sizes/frame'], golden['sizes/resized'], golden['sizes/padded']
    assert len(frames) >= 20
    for (h, w), size, pad in zip(frames, resized, padded):
        assert resize.resized_size(int(h), int(w)) == tuple(size), (h, w)
        assert resize.padded_size(*size) == tuple(pad), (h, w)
    table = {tuple(f): tuple(s) for f, s in zip(frames.tolist(), resized.tolist())}
    assert {f: table[f] for f in SPEC_SIZES} == SPEC_SIZES


def test_normalization_table_matches_deeplabcut_and_torchvision(golden):
    assert_bits_equal(resize.normalization_table(), golden['table'], 'table')
    meta = json.loads(str(golden['meta']))
    assert meta['detector_data_inference']['normalize_images'] is True


def test_rescale_boxes_matches_postprocess(golden):
    cases = sorted({k.split('/')[1] for k in golden if k.startswith('boxes/')})
    assert len(cases) == 5
    for i in cases:
        g = {k: golden[f'boxes/{i}/{k}'] for k in ('input', 'resized', 'original', 'output')}
        ours = resize.rescale_boxes(g['input'], tuple(g['resized']), tuple(g['original']))
        assert_bits_equal(ours, g['output'], f'boxes {i}')
        assert not np.array_equal(g['input'], g['output'])


# ------------------------------------------------------------------------------------------
# FMA emulation

def exact_f32(x, y, z) -> np.float32:
    """Correctly rounded float32 x * y + z from exact rationals (ties to even)."""
    v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    c = np.float32(float(v))
    candidates = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    errors = [abs(Fraction(float(q)) - v) for q in candidates]
    best = [q for q, e in zip(candidates, errors) if e == min(errors)]
    return min(best, key=lambda q: int(q.view(np.int32)) & 1)


def fma_cases(n: int = 200_000):
    rng = np.random.default_rng(0)

    def spread(k):
        return (rng.standard_normal(k) * 2.0 ** rng.integers(-30, 30, k)).astype(np.float32)

    x, y, z = spread(n), spread(n), spread(n)
    q = n // 5
    z[:q] = -(x[:q] * y[:q])  # catastrophic cancellation: the result is the product's error
    z[q:2 * q] = (-(x[q:2 * q] * y[q:2 * q]) * np.float32(1 + 2 ** -21)).astype(np.float32)
    # Exact ties: small integer products plus a large z put x * y + z on a float32 midpoint.
    small = rng.integers(1, 2 ** 8, (2, q)).astype(np.float32)
    x[2 * q:3 * q], y[2 * q:3 * q] = small
    z[2 * q:3 * q] = (np.float32(2 ** 24) * rng.integers(1, 2 ** 6, q)).astype(np.float32)
    # Bilinear-like operands: weights in [0, 1], pixels in the normalised range.
    x[3 * q:] = rng.uniform(0, 1, n - 3 * q).astype(np.float32)
    y[3 * q:] = rng.uniform(-12, 12, n - 3 * q).astype(np.float32)
    z[3 * q:] = (rng.uniform(0, 1, n - 3 * q) * rng.uniform(-12, 12, n - 3 * q)).astype(np.float32)
    return x, y, z


def test_host_fma_is_exactly_rounded():
    x, y, z = fma_cases(20_000)
    ours = float32.fma_host(x, y, z)
    picks = np.random.default_rng(1).choice(len(x), 1500, replace=False)
    wrong = [i for i in picks if ours[i] != exact_f32(x[i], y[i], z[i])]
    assert not wrong, f'{len(wrong)} wrong, e.g. {wrong[:3]}'
    ties = (ours[8000:12000] != (x[8000:12000] * y[8000:12000]).astype(np.float64) + z[8000:12000])
    assert ties.any()  # the tie cases really do round


def test_device_fma_matches_exact_rounding_jitted_and_eager():
    x, y, z = fma_cases()
    expected = float32.fma_host(x, y, z)
    assert_bits_equal(jax.jit(float32.fma)(x, y, z), expected, 'fma (jit)')
    assert_bits_equal(float32.fma(x[:2000], y[:2000], z[:2000]), expected[:2000], 'fma (eager)')
    assert_bits_equal(jax.jit(float32.mul)(x, y), x * y, 'mul (jit)')
    naive = np.float32(x * y) + z  # what a compiler without FMA computes: must differ somewhere
    assert (naive != expected).sum() > 1000


# ------------------------------------------------------------------------------------------
# Bilinear resize: live against torch

def torch_resize(image: np.ndarray, out_h: int, out_w: int, threads: int | None = None) -> np.ndarray:
    """torch on CHW float32, back to HWC; called with ``size`` (so ``scales=None``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        out = F.interpolate(t, size=(out_h, out_w), mode='bilinear', align_corners=False)
    finally:
        torch.set_num_threads(before)
    return out[0].permute(1, 2, 0).numpy()


def live_kernel(out_h: int, out_w: int, threads: int | None = None) -> tuple[str, bool]:
    """The kernel and index rounding the installed torch uses for this call."""
    return resize.torch_cpu_bilinear_kernel(out_h, out_w, 3, threads or torch.get_num_threads(),
                                            torch.__version__)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng([seed, h, w]).standard_normal((h, w, 3)) * 4).astype(np.float32)


@pytest.mark.parametrize('in_size', [(480, 640), (720, 1280), (1024, 1024)])
def test_resize_matches_torchvision_interpolate_call(in_size):
    """The call torchvision makes: scale_factor + recompute_scale_factor=True."""
    h, w = in_size
    out_h, out_w = resize.resized_size(h, w)
    assert (out_h, out_w) == SPEC_SIZES[in_size]
    image = random_image(h, w)
    scale = min(800 / min(h, w), 1333 / max(h, w))
    theirs = F.interpolate(torch.from_numpy(image.transpose(2, 0, 1).copy())[None], scale_factor=scale,
                           mode='bilinear', recompute_scale_factor=True, align_corners=False)
    theirs = theirs[0].permute(1, 2, 0).numpy()
    kernel = live_kernel(out_h, out_w)
    ours = resize_jit(image, out_h, out_w, *kernel)
    assert_bits_equal(ours, theirs, f'{in_size} -> {(out_h, out_w)} {kernel}')


@pytest.mark.parametrize('sizes', [
    ((48, 64), (100, 133)),    # upsampling, generic kernel with 2+ threads
    ((30, 20), (50, 33)),      # h + w <= 128: channels-last kernel
    ((100, 90), (37, 41)),     # downsampling, no antialiasing
    ((97, 61), (160, 61)),     # one side unchanged (copy path)
    ((1, 1), (40, 120)),
])
def test_resize_matches_torch_interpolate(sizes):
    (h, w), (out_h, out_w) = sizes
    image = random_image(h, w, seed=1)
    kernel = live_kernel(out_h, out_w)
    assert_bits_equal(resize_jit(image, out_h, out_w, *kernel),
                      torch_resize(image, out_h, out_w), f'{sizes} {kernel}')


def test_torch_kernel_dispatch_rule():
    assert resize.torch_cpu_bilinear_kernel(800, 1066, 3, 2, '2.13.0+cpu') == ('separable', True)
    assert resize.torch_cpu_bilinear_kernel(800, 1066, 3, 16, '2.15.0+cu132') == ('separable', False)
    assert resize.torch_cpu_bilinear_kernel(800, 1066, 3, 1, '2.15.0') == ('channels_last', True)
    assert resize.torch_cpu_bilinear_kernel(60, 68, 3, 2, '2.15.0') == ('channels_last', True)
    assert resize.torch_cpu_bilinear_kernel(60, 69, 1, 1, '2.13.0') == ('separable', True)


def test_both_torch_kernels_and_their_dispatch():
    """One thread sends 3-channel images to torch's channels-last kernel; the kernels (and the
    two ways to round the source index) round differently, so each matches only its own formula."""
    image, (out_h, out_w) = random_image(120, 160, seed=2), (200, 266)
    theirs = {threads: torch_resize(image, out_h, out_w, threads) for threads in (1, 2)}
    outputs = {(k, f): np.asarray(resize_jit(image, out_h, out_w, k, f))
               for k in resize.KERNELS for f in (True, False)}
    for threads in (1, 2):
        match = live_kernel(out_h, out_w, threads)
        assert_bits_equal(outputs[match], theirs[threads], f'{match} vs torch, {threads} thread(s)')
        for other in set(outputs) - {match}:
            assert (outputs[other] != theirs[threads]).sum() > 100, other
    with pytest.raises(ValueError, match='kernel'):
        resize.resize_bilinear(image, 10, 10, 'bicubic')


# ------------------------------------------------------------------------------------------
# preprocess end to end (goldens)

@pytest.mark.parametrize('name', ['small', 'small_cl', 'vga'])
def test_preprocess_matches_generalized_rcnn_transform(golden, name):
    g = {k.split('/')[-1]: v for k, v in golden.items() if k.startswith(f'pre/{name}/')}
    meta = json.loads(str(golden['meta']))
    n, hp, wp, _ = g['shape']
    h, w = int(g['image_size'][0]), int(g['image_size'][1])
    frame_size = {'small': (48, 64), 'small_cl': (48, 64), 'vga': (480, 640)}[name]
    frame = np.random.default_rng([meta['seed'], *frame_size]).integers(
        0, 256, (*frame_size, 3), dtype=np.uint8)  # as make_resize_fixtures.synthetic_frame
    assert sha256(frame) == str(g['frame_sha256']), 'the synthetic frame no longer regenerates'
    min_size, max_size = (int(v) for v in g['sizes'])
    kernel, index_fma = resize.torch_cpu_bilinear_kernel(
        h, w, 3, meta['torch_num_threads'], meta['versions']['torch'])
    assert kernel == ('channels_last' if name == 'small_cl' else 'separable')

    def run(index_fma):
        images, size = preprocess_jit(frame[None], min_size, max_size, 32, kernel=kernel, index_fma=index_fma)
        assert (int(size[0]), int(size[1])) == (h, w)
        return np.asarray(images)

    images = run(index_fma)
    assert images.shape == (n, hp, wp, 3)
    step = meta['subsample'][name]
    assert_bits_equal(images[:, ::step, ::step], g['subsample'], f'{name} subsample')
    assert sha256(images) == str(g['sha256']), f'{name}: some values differ outside the subsample'
    assert np.abs(images).max() == g['max_abs']
    np.testing.assert_allclose(images.astype(np.float64).sum((0, 1, 2)), g['channel_sums'], rtol=1e-12)
    assert not images[:, h:].any() and not images[:, :, w:].any()  # zero padding
    if name == 'small':  # the goldens' torch build rounds the source index its own way
        assert sha256(run(not index_fma)) != str(g['sha256'])


def test_preprocess_batches_and_validates():
    frames = np.random.default_rng(3).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    batch, size = preprocess_jit(frames, 64, 100, 32, kernel='separable', index_fma=True)
    assert tuple(int(v) for v in size) == (60, 100) and batch.shape == (2, 64, 128, 3)
    for i in range(2):
        single = preprocess_jit(frames[i:i + 1], 64, 100, 32, kernel='separable', index_fma=True)[0]
        assert_bits_equal(batch[i], single[0], f'frame {i}')
    assert resize.preprocess(frames[:1, :8, :8], 16, 16)[1] == (16, 16)  # eager, Python ints
    with pytest.raises(ValueError, match='uint8'):
        resize.preprocess(frames.astype(np.float32), 64, 100)
