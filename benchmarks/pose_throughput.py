"""Pose crops/s: superanimal-jax vs DeepLabCut 3.0.2's PyTorch PoseModel, same machine, same run.

Run inside the reference environment (it has both stacks; see ../shared/reference/README.md):

    .ref/bin/python benchmarks/pose_throughput.py                         # CPU, fp32, batch 8 and 64
    .ref/bin/python benchmarks/pose_throughput.py --batch-sizes 8 --repeats 9
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT \
        .ref/bin/python benchmarks/pose_throughput.py --tag ynn                # an XLA CPU variant
    python benchmarks/pose_throughput.py --dtypes float32 bfloat16        # GPU, ours only if no .ref

Both models get the same weights (DeepLabCut's PoseModel initialisation, converted).  Ours is
:class:`superanimal_jax.PoseEstimator` as the product runs it (its XLA:CPU options, its precision);
``ours_before`` is the same network jitted with XLA's defaults, as before issue 17.  Calls go in
turn (ours, before, theirs); each figure is the median over ``--repeats`` timed calls after one
warm-up; our first call (trace + compile) is reported separately.  CPU threads: torch gets as
many as XLA uses (all cores).  Results go to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superanimal_jax.checkpoints.convert import convert_pose_state  # noqa: E402
from superanimal_jax.inference.pose import PoseEstimator  # noqa: E402
from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork  # noqa: E402

from _common import describe, in_turn, timed, write_report  # noqa: E402


def deeplabcut_model():
    """DeepLabCut's PoseModel for SuperAnimal-TopViewMouse, or None outside the reference env."""
    try:
        from deeplabcut.pose_estimation_pytorch.config.pose import PoseConfig
        from deeplabcut.pose_estimation_pytorch.models import PoseModel
    except ImportError:
        return None
    cfg = PoseConfig.build_for_superanimal_inference(
        super_animal='superanimal_topviewmouse', model_name='hrnet_w32',
        detector_name='fasterrcnn_resnet50_fpn_v2', max_individuals=3, device='cpu').model_dump()
    model = PoseModel.build(cfg['model'])
    model.eval()
    return model


def our_variables(state: dict[str, np.ndarray] | None):
    config = POSE_VARIANTS['hrnet_w32']
    if state is None:  # No reference: random weights of the right shapes.
        net = PoseNetwork(config)
        return jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
    return convert_pose_state(state)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[8, 64])
    parser.add_argument('--dtypes', nargs='+', default=['float32'], choices=['float32', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--tag', default='', help='suffix for the result file (e.g. an XLA_FLAGS variant)')
    args = parser.parse_args()

    backend = jax.default_backend()
    torch_model = deeplabcut_model()
    if torch_model is not None:
        import torch

        torch_device = 'cuda' if backend == 'gpu' and torch.cuda.is_available() else 'cpu'
        torch.set_num_threads(os.cpu_count())
        torch_model.to(torch_device)
        state = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    else:
        print('DeepLabCut not importable: measuring superanimal-jax only')
        state = None
    variables = jax.device_put(our_variables(state))
    rng = np.random.default_rng(0)
    results = []
    for dtype in args.dtypes:
        estimator = PoseEstimator(POSE_VARIANTS['hrnet_w32'], variables, dtype=dtype)
        network = PoseNetwork(POSE_VARIANTS['hrnet_w32'], dtype=jnp.dtype(dtype))
        before = jax.jit(lambda v, x: network.apply(v, x)['heatmaps'])
        for batch in args.batch_sizes:
            x = rng.standard_normal((batch, 256, 256, 3)).astype(np.float32)
            x_dev = jax.device_put(x)
            forward = lambda: estimator.heatmaps(x_dev).block_until_ready()  # noqa: E731
            forward_before = lambda: before(variables, x_dev).block_until_ready()  # noqa: E731
            compile_s = timed(forward)
            compile_before_s = timed(forward_before)
            forward()
            torch_call = None
            if torch_model is not None:
                xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(torch_device)
                torch_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32

                def torch_call():
                    with torch.inference_mode(), torch.autocast(
                            torch_device, dtype=torch_dtype, enabled=dtype == 'bfloat16'):
                        out = torch_model(xt)['bodypart']['heatmap']
                    if torch_device == 'cuda':
                        torch.cuda.synchronize()
                    return out

                torch_call()  # Warm-up.
            calls = {'ours': forward, 'ours_before': forward_before, 'deeplabcut': torch_call}
            row = {'dtype': dtype, 'batch': batch, 'compile_s': compile_s,
                   'compile_before_s': compile_before_s, **in_turn(calls, args.repeats, batch, 'crops')}
            if torch_call is not None:
                row['ratio'] = row['ours_crops_per_s'] / row['deeplabcut_crops_per_s']
                row['ratio_before'] = row['ours_before_crops_per_s'] / row['deeplabcut_crops_per_s']
            results.append(row)
            before_speed = row['ours_before_crops_per_s']
            print(f'{dtype} batch {batch}: {describe(row, "crops")}; before {before_speed:.2f} crops/s'
                  f' (compile {compile_s:.1f} s, before {compile_before_s:.1f} s)', flush=True)
    write_report('pose_throughput', results, args.out, args.tag)


if __name__ == '__main__':
    main()
