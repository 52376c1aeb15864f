"""Facts shared across the package: keypoint names and colours, ImageNet statistics, box margin."""

from __future__ import annotations

import numpy as np

# SuperAnimal-TopViewMouse keypoints, in heatmap channel order.
TOPVIEWMOUSE_KEYPOINTS = (
    'nose', 'left_ear', 'right_ear', 'left_ear_tip', 'right_ear_tip', 'left_eye', 'right_eye',
    'neck', 'mid_back', 'mouse_center', 'mid_backend', 'mid_backend2', 'mid_backend3',
    'tail_base', 'tail1', 'tail2', 'tail3', 'tail4', 'tail5', 'left_shoulder', 'left_midside',
    'left_hip', 'right_shoulder', 'right_midside', 'right_hip', 'tail_end', 'head_midpoint',
)

# Their colours (RGB), in keypoint order: DeepLabCut's 27-colour map for SuperAnimal videos.
TOPVIEWMOUSE_COLORS = np.array([
    (127, 0, 255), (109, 28, 254), (91, 56, 253), (71, 86, 251), (53, 112, 248), (33, 139, 244),
    (15, 162, 239), (4, 185, 234), (22, 203, 228), (42, 220, 220), (60, 233, 213), (80, 244, 204),
    (98, 250, 195), (118, 254, 185), (136, 254, 175), (156, 250, 163), (174, 244, 152),
    (194, 233, 139), (212, 220, 127), (232, 203, 113), (250, 185, 100), (255, 162, 86),
    (255, 139, 72), (255, 112, 57), (255, 86, 43), (255, 56, 28), (255, 28, 14)], np.uint8)

# ImageNet statistics (RGB, for pixel values in [0, 1]), as both DeepLabCut and torchvision use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The margin (pixels) DeepLabCut 3.0.2 adds around labelled keypoints to make a box.
BBOX_MARGIN = 25
