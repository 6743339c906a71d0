"""Group Pose, ResNet-50: the paper's model (configs/Base-GroupPose.yaml and the defaults of
grouppose.add_grouppose_config), as a LazyConfig. Each setting is given once: the others refer
to it (e.g. every part's hidden size is ``model.input_proj.dim``)."""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from grouppose.modeling.backbone import InputProjection, use_affine_frozen_batch_norm
from grouppose.modeling.criterion import make_criterion
from grouppose.modeling.decoder import GroupPoseDecoder
from grouppose.modeling.encoder import DeformableEncoder
from grouppose.modeling.meta_arch import GroupPose
from grouppose.modeling.oks import oks_sigmas
from grouppose.modeling.query_selection import InstanceKeypointQueries, QuerySelection
from grouppose.modeling.variants import DecoderVariant

model = L(GroupPose)(
    # torchvision-layout ResNet-50 (stride in the 3x3 conv), stem and res2 frozen, with frozen
    # BatchNorm computed as the official does (use_affine_frozen_batch_norm).
    backbone=L(use_affine_frozen_batch_norm)(
        module=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
    ),
    in_features=["res3", "res4", "res5"],  # read from the backbone, finest first
    # Channels of in_features (ResNet-50: 512, 1024, 2048) -> hidden size, + 1 extra level.
    input_proj=L(InputProjection)(in_channels=[512, 1024, 2048], dim=256, num_levels=4),
    encoder=L(DeformableEncoder)(
        num_layers=6, dim="${..input_proj.dim}", num_heads=8, ffn_dim=2048, dropout=0.0,
        num_levels="${..input_proj.num_levels}", num_points=4,
    ),
    query_selection=L(QuerySelection)(
        dim="${..input_proj.dim}", num_keypoints=17, num_instances=100
    ),
    # The paper's decoder; the ablation switches of MODEL.GROUP_POSE.{SELF_ATTN, ...} are
    # DecoderVariant's fields (e.g. model.decoder.variant.group_attn="within_only").
    queries=L(InstanceKeypointQueries)(
        dim="${..input_proj.dim}", num_keypoints="${..query_selection.num_keypoints}",
        variant="${..decoder.variant}",
        instance_from_person=False,  # True where a human detection decoder makes the persons
    ),
    decoder=L(GroupPoseDecoder)(
        num_layers=6, dim="${..input_proj.dim}", num_heads="${..encoder.num_heads}",
        ffn_dim="${..encoder.ffn_dim}", dropout="${..encoder.dropout}",
        num_levels="${..input_proj.num_levels}", num_points=4,
        num_keypoints="${..query_selection.num_keypoints}", variant=L(DecoderVariant)(),
    ),
    criterion=L(make_criterion)(
        # The kpt_oks_sigmas of the training set's metadata, else the standard ones for K.
        sigmas=L(oks_sigmas)(
            num_keypoints="${...query_selection.num_keypoints}",
            dataset_names="${dataloader.train.dataset.names}",
        ),
        num_decoder_layers="${..decoder.num_layers}",
        aux_loss="${..aux_loss}",
        focal_alpha=0.25,
        # Loss weights and matching costs: focal classification, keypoint L1, 1 - OKS.
        cls_weight=2.0, keypoint_weight=10.0, oks_weight=4.0,
        cost_class=2.0, cost_keypoints=10.0, cost_oks=4.0,
        interm_loss_weight=1.0,  # multiplies the encoder (two-stage) prediction's losses
    ),
    # RGB in 0..255, normalised with torchvision's ImageNet mean / std.
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    pos_temperature=20.0,  # of the feature maps' sine position encoding
    aux_loss=True,
    test_topk=50,
    test_score_thresh=0.0,
)
