"""The rule tables of the released networks: the pose HRNet (both file layouts) and the detector."""

from __future__ import annotations

from superanimal_jax.checkpoints.rules import (
    ConversionTable,
    Ignore,
    Rule,
    conv_kernel,
    linear_after_flatten_kernel,
    linear_kernel,
    transposed_conv_1x1_kernel,
)
from superanimal_jax.models.pose import PoseConfig

# Module paths whose ``weight`` is a conv kernel / BatchNorm: timm and torchvision name them
# ``convN`` / ``bnN``, and in every ``nn.Sequential`` of these networks index 0 is the conv and
# index 1 its BatchNorm (``downsample.0``, ``transition1.0.1``, ``fpn.inner_blocks.2.1`` ...).
_CONV = r'(?P<m>(?:.+\.)?conv\d|.+\.0)'
_BN = r'(?P<m>(?:.+\.)?bn\d|.+\.1)'
# DeepLabCut 3's name | the seed file's name (``_parse_model_snapshot``'s rename; see convert.py).
_HEAD = r'heads\.bodypart\.heatmap_head\.(?:deconv_layers\.0|model)'
_BN_COUNTER = Ignore(r'.+\.num_batches_tracked',
                     'BatchNorm update counter; statistics are frozen, so it is never used')


def conv_bn_rules(source: str, target: str) -> list[Rule]:
    """Conv kernels and BatchNorms under the key prefix ``source`` (a regex) -> ``target/``."""
    return [
        Rule(rf'{source}{_CONV}\.weight', f'params/{target}{{m}}/kernel', conv_kernel),
        Rule(rf'{source}{_BN}\.weight', f'params/{target}{{m}}/scale'),
        Rule(rf'{source}{_BN}\.bias', f'params/{target}{{m}}/bias'),
        Rule(rf'{source}{_BN}\.running_mean', f'batch_stats/{target}{{m}}/mean'),
        Rule(rf'{source}{_BN}\.running_var', f'batch_stats/{target}{{m}}/var'),
    ]


def pose_rules(config: PoseConfig) -> ConversionTable:
    """The ordered conversion table for a pose variant."""
    last_stage = len(config.backbone.stages) + 1
    last_module = config.backbone.stages[-1].num_modules - 1
    ignore = [
        _BN_COUNTER,
        Ignore(rf'backbone\.model\.stage{last_stage}\.{last_module}\.fuse_layers\.[1-9]\d*\..+',
               'fuse outputs 1+ of the last HRNet module: timm computes them, DeepLabCut keeps '
               'only branch 0, so they affect no output and get no gradient'),
        Ignore(r'backbone\.model\.(?:downsamp_modules|final_layer|classifier)\..+',
               "timm's classification head in the seed's pose_model.pth, dropped by DeepLabCut "
               "(_parse_model_snapshot) and unused by its features-only HRNet"),
    ]
    rules = conv_bn_rules(r'backbone\.model\.', 'backbone/') + [
        Rule(rf'{_HEAD}\.weight', 'params/head/deconv/kernel', transposed_conv_1x1_kernel),
        Rule(rf'{_HEAD}\.bias', 'params/head/deconv/bias'),
    ]
    return ConversionTable(rules, ignore)


def detector_rules() -> ConversionTable:
    """The ordered conversion table for the Faster R-CNN detector (404 keys under ``model.``)."""
    rules = [
        # Biased convs first: the RPN tower (conv.K.0) and its two 1x1 output convs.
        Rule(r'model\.(?P<m>rpn\.head\.conv\.\d+\.0)\.weight', 'params/{m}/kernel', conv_kernel),
        Rule(r'model\.(?P<m>rpn\.head\.conv\.\d+\.0)\.bias', 'params/{m}/bias'),
        Rule(r'model\.(?P<m>rpn\.head\.(?:cls_logits|bbox_pred))\.weight', 'params/{m}/kernel',
             conv_kernel),
        Rule(r'model\.(?P<m>rpn\.head\.(?:cls_logits|bbox_pred))\.bias', 'params/{m}/bias'),
        Rule(r'model\.roi_heads\.box_head\.5\.weight', 'params/roi_heads/box_head/5/kernel',
             linear_after_flatten_kernel(256, 7, 7)),
        Rule(r'model\.roi_heads\.box_head\.5\.bias', 'params/roi_heads/box_head/5/bias'),
        Rule(r'model\.(?P<m>roi_heads\.box_predictor\.(?:cls_score|bbox_pred))\.weight',
             'params/{m}/kernel', linear_kernel),
        Rule(r'model\.(?P<m>roi_heads\.box_predictor\.(?:cls_score|bbox_pred))\.bias', 'params/{m}/bias'),
    ] + conv_bn_rules(r'model\.', '')
    return ConversionTable(rules, [_BN_COUNTER])


_TF_UNIT = r'resnet_v1_50/block(?P<b>\d+)/unit_(?P<u>\d+)/bottleneck_v1/(?P<layer>shortcut|conv\d)'
_TF_HEADS = r'pose/(?P<head>part_pred|locref_pred|pairwise_pred)/block4'


def pose_resnet_rules() -> ConversionTable:
    """The table of DeepLabCut's TF PoseResnet checkpoint (269 variables, plus ``pairwise_pred`` when
    the network has part-affinity fields): tf_slim's names, TF's HWIO kernels as they are."""
    rules = _slim_resnet_rules() + [Rule(rf'{_TF_HEADS}/weights', 'params/{head}/weights'),
                                    Rule(rf'{_TF_HEADS}/biases', 'params/{head}/biases')]
    return ConversionTable(rules, [_TF_STEP])


_TF_STEP = Ignore(r'global_step', 'the training step counter')
_TF_DECODER = r'decoder_filters/(?P<m>decoder_parallel_\d)'
_TF_TRANSPOSED = r'pose/(?P<head>part_pred_s1|locref_pred|pairwise_pred_s1)/Conv2d_transpose'
_TF_STAGES = r'pose/(?P<head>(?:part|pairwise)_pred(?:_s[234])?)/Conv'


def pose_multinet_rules() -> ConversionTable:
    """The table of DeepLabCut's multi-stage TF network (DLCRNet_ms5, 309 variables with
    part-affinity fields): the backbone as :func:`pose_resnet_rules`, the decoder convs and their
    BatchNorm offsets, the transposed stage-1 heads and the refinement stages' convs.  The decoder
    BatchNorm's moving statistics are skipped: at inference TF normalises with batch statistics."""
    rules = _slim_resnet_rules() + [
        Rule(rf'{_TF_DECODER}/weights', 'params/{m}/conv/kernel'),
        Rule(rf'{_TF_DECODER}/BatchNorm/beta', 'params/{m}/bias'),
        Rule(rf'{_TF_TRANSPOSED}/weights', 'params/{head}/weights'),
        Rule(rf'{_TF_TRANSPOSED}/biases', 'params/{head}/biases'),
        Rule(r'pose/Conv2d_transpose/weights', 'params/Conv2d_transpose/weights'),
        Rule(r'pose/Conv2d_transpose/biases', 'params/Conv2d_transpose/biases'),
        Rule(rf'{_TF_STAGES}/weights', 'params/{head}/Conv/kernel'),
        Rule(rf'{_TF_STAGES}/biases', 'params/{head}/Conv/bias'),
    ]
    ignore = [_TF_STEP, Ignore(rf'{_TF_DECODER}/BatchNorm/moving_(?:mean|variance)',
                               "the decoder's BatchNorm runs on batch statistics at inference (slim's "
                               'batch_norm defaults to is_training=True), so these are never read')]
    return ConversionTable(rules, ignore)


def _slim_resnet_rules() -> list[Rule]:
    rules = []
    for source, target in ((_TF_UNIT, 'resnet_v1_50/block{b}_unit_{u}/{layer}'),
                           (r'resnet_v1_50/(?P<layer>conv1)', 'resnet_v1_50/{layer}')):
        rules += [
            Rule(rf'{source}/weights', f'params/{target}/conv/kernel'),
            Rule(rf'{source}/BatchNorm/gamma', f'params/{target}/BatchNorm/scale'),
            Rule(rf'{source}/BatchNorm/beta', f'params/{target}/BatchNorm/bias'),
            Rule(rf'{source}/BatchNorm/moving_mean', f'batch_stats/{target}/BatchNorm/mean'),
            Rule(rf'{source}/BatchNorm/moving_variance', f'batch_stats/{target}/BatchNorm/var'),
        ]
    return rules
