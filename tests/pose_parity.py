"""Checks shared by the golden (default) and live (reference tier) pose parity tests.

Errors are max-abs differences relative to the tap's max-abs value in DeepLabCut's output.
"""

import jax
import jax.numpy as jnp
import numpy as np

import superanimal_jax
from superanimal_jax.checkpoints import synthetic
from superanimal_jax.models.pose import PoseNetwork

TARGET = 1e-5  # Relative max-abs error we aim for at every tap.
LIMIT = 1e-4  # Hard limit.


def golden_inputs(golden, manifest) -> dict[str, np.ndarray]:
    """The inputs the goldens were recorded on: real crops (normalised by us) and random arrays."""
    inputs = {}
    for key in golden:
        if key.startswith('crops/'):
            inputs[key.removeprefix('crops/')] = np.asarray(
                superanimal_jax.normalize_crops(golden[key][None]))
    for j, (name, shape) in enumerate(manifest['random_inputs'].items()):
        inputs[name] = synthetic.random_crops(tuple(shape[1:3]), j, manifest['seed'])
    return inputs


def tap_errors(taps: dict, golden, name: str, subsample: int | None) -> dict[str, float]:
    ours = {'stem': taps['stem'], 'layer1': taps['layer1'], 'heatmaps': taps['heatmaps']}
    for stage in ('stage2', 'stage3', 'stage4'):
        ours.update({f'{stage}/{b}': t for b, t in enumerate(taps[stage])})
    errors = {}
    for tap, value in ours.items():
        ref = golden[f'{name}/{tap}']
        value = np.asarray(value)
        if subsample and tap != 'heatmaps':
            value = value[:, ::subsample, ::subsample]
        assert value.shape == ref.shape, (name, tap, value.shape, ref.shape)
        scale = float(golden[f'{name}/maxabs/{tap}']) if tap != 'heatmaps' else np.abs(ref).max()
        errors[tap] = float(np.abs(value - ref).max() / scale)
    return errors


def check_taps(pose, golden, inputs, subsample: int | None) -> dict[str, float]:
    """Asserts every tap of every input within LIMIT; returns the worst error per tap."""
    worst = {}
    for name, x in inputs.items():
        errors = tap_errors(pose.taps(x), golden, name, subsample)
        print(f'\n{name}: ' + ', '.join(f'{t} {e:.2e}' for t, e in errors.items()))
        for tap, e in errors.items():
            worst[tap] = max(worst.get(tap, 0.0), e)
    print('\nworst per tap: ' + ', '.join(f'{t} {e:.2e}' for t, e in worst.items()))
    print(f'over the {TARGET:g} target: {sorted(t for t, e in worst.items() if e > TARGET) or "none"}')
    assert max(worst.values()) <= LIMIT, worst
    return worst


def check_keypoints(pose, golden, inputs) -> None:
    """Same argmax cell for every keypoint, except where DeepLabCut's own heatmap has two cells
    equal to within our tap tolerance (an exact near-tie); scores within the same tolerance."""
    stride = pose.config.stride
    for name, x in inputs.items():
        ours = np.asarray(pose.keypoints(x))[0]
        ref = golden[f'{name}/keypoints'][0]
        heat = golden[f'{name}/heatmaps'][0]
        tolerance = LIMIT * np.abs(heat).max()
        ties = []
        for k in np.flatnonzero(np.any(ours[:, :2] != ref[:, :2], axis=-1)):
            cell = lambda xy: heat[int(xy[1] // stride), int(xy[0] // stride), k]  # noqa: E731
            ties.append((int(k), float(cell(ref[k]) - cell(ours[k]))))
        assert all(abs(d) <= tolerance for _, d in ties), (name, ties)
        agree = np.all(ours[:, :2] == ref[:, :2], axis=-1)
        np.testing.assert_allclose(ours[agree, 2], ref[agree, 2], rtol=0, atol=tolerance, err_msg=name)
        print(f'{name}: {agree.sum()}/{len(agree)} keypoints identical, near-ties: {ties}')


def check_float64(pose, golden64, inputs, limit: float = 1e-10) -> None:
    """In float64 the two implementations must agree to rounding."""
    with jax.enable_x64(True):
        network = PoseNetwork(pose.config, dtype=jnp.float64)
        variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), pose.variables)
        apply = jax.jit(lambda v, x: network.apply(v, x)['heatmaps'])
        for key in golden64:
            name = key.split('/')[0]
            ref = golden64[key]
            ours = np.asarray(apply(variables, inputs[name].astype(np.float64)))
            error = np.abs(ours - ref).max() / np.abs(ref).max()
            print(f'{name}: float64 relative max-abs error {error:.2e}')
            assert error <= limit, (name, error)
