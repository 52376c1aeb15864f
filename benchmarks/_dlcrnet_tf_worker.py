"""The DeepLabCut side of ``dlcrnet_throughput.py``, run in ``.ref-tf/`` (from tests/reference/):

    python _dlcrnet_tf_worker.py VIDEO BATCH_SIZE

TensorFlow keeps its defaults (oneDNN on, as in a user's DeepLabCut environment; set
``TF_ENABLE_ONEDNN_OPTS=0`` to time its Eigen kernels).  Writes the golden DLCRNet weights
(``tests/fixtures/dlcrnet_*``) as a TF1 checkpoint, builds DeepLabCut's SuperAnimal TF session
from it once (``predict.setup_pose_prediction``), prints ``{"setup_s": ...}``, then for each line
of stdin (a JSON scale list) runs ``superanimal_inference._video_inference`` on VIDEO and prints
``{"run_s": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'reference'))
from _reference import ROOT, synthetic  # noqa: E402

sys.path.insert(0, str(ROOT.parent / 'shared' / 'reference' / 'tensorflow'))


def write_checkpoint(folder: Path) -> str:
    """The golden weights saved by TF under DeepLabCut's variable names; returns the prefix."""
    import tensorflow as tf
    from deeplabcut.pose_estimation_tensorflow.nnets import PoseNetFactory
    from make_dlcrnet_fixtures import network_config

    state = synthetic.tf_fixture_state(ROOT / 'tests' / 'fixtures')
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3])
        net = PoseNetFactory.create(network_config())
        net.prediction_layers(*net.extract_features(image))
        variables = tf.compat.v1.global_variables()
        with tf.compat.v1.Session() as session:
            for v in variables:
                v.load(state[v.op.name], session)
            return tf.compat.v1.train.Saver(variables).save(session, str(folder / 'snapshot'), global_step=0)


def main() -> None:
    # isort: off
    import tf_keras_shim  # noqa: F401
    import dlc_tf_only  # noqa: F401
    import tensorflow as tf
    from deeplabcut.pose_estimation_tensorflow.core import predict
    from deeplabcut.pose_estimation_tensorflow.modelzoo.api import superanimal_inference as sa
    from deeplabcut.utils.auxfun_videos import VideoWriter
    from make_dlcrnet_fixtures import superanimal_test_config
    # isort: on

    tf.compat.v1.disable_eager_execution()
    video, batch_size = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cfg = superanimal_test_config()
        cfg.update(init_weights=write_checkpoint(Path(tmp)), partaffinityfield_graph=[],
                   partaffinityfield_predict=False, num_outputs=1, batch_size=batch_size)
        session, inputs, outputs = predict.setup_pose_prediction(cfg)
        print(json.dumps({'setup_s': time.perf_counter() - start}), flush=True)
        for line in sys.stdin:
            scales = json.loads(line)
            capture = VideoWriter(video)
            start = time.perf_counter()
            with open(os.devnull, 'w') as quiet:  # DeepLabCut prints and draws a progress bar.
                stdout, stderr = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = quiet
                try:
                    sa._video_inference(cfg, session, inputs, outputs, capture, len(capture), batch_size,
                                        scale_list=scales)
                finally:
                    sys.stdout, sys.stderr = stdout, stderr
            print(json.dumps({'run_s': time.perf_counter() - start}), flush=True)


if __name__ == '__main__':
    main()
