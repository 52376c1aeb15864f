"""DeepLabCut's side of ``video_adaptation.py`` (run by it inside ``.ref``): one whole
``video_inference_superanimal(..., video_adapt=True)``.

    .ref/bin/python benchmarks/_adaptation_dlc_worker.py VIDEO POSE.pt DETECTOR.pt SETTINGS_JSON

``SETTINGS_JSON``: the keyword arguments (``max_individuals``, ``bbox_threshold``, ...).  Results
go next to the video, as DeepLabCut writes them without ``dest_folder``.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import deeplabcut
    import torch

    video, pose, detector, settings = sys.argv[1:5]
    torch.set_num_threads(2)
    deeplabcut.video_inference_superanimal(
        [video], 'superanimal_topviewmouse', model_name='hrnet_w32',
        detector_name='fasterrcnn_resnet50_fpn_v2',
        customized_pose_checkpoint=pose, customized_detector_checkpoint=detector, video_adapt=True,
        device='cpu', **json.loads(settings))


if __name__ == '__main__':
    main()
