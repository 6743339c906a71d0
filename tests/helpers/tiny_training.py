"""A tiny Group Pose (tests/helpers/tiny_grouppose.py with N = 6, 2 decoder layers) and
random training batches of awkward sizes, for the model tests."""

import torch
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.modeling import build_model
from detectron2.structures import Instances, Keypoints

from grouppose.modeling.meta_arch import GroupPose
from helpers.tiny_grouppose import tiny_config

NUM_INSTANCES = 6
DEC_LAYERS = 2


def tiny_cfg(num_keypoints: int = 17, **group_pose):
    cfg = tiny_config()
    cfg.DATASETS.TEST = ()
    gp = cfg.MODEL.GROUP_POSE
    gp.NUM_KEYPOINTS = num_keypoints
    gp.DEC_LAYERS = DEC_LAYERS
    gp.NUM_INSTANCES = NUM_INSTANCES
    gp.TEST_TOPK = 4
    for key, value in group_pose.items():
        gp[key] = value
    return cfg


def build(cfg) -> GroupPose:
    torch.manual_seed(0)
    return build_model(cfg)


def person_instances(image_size, num_people: int, num_keypoints: int, seed: int) -> Instances:
    """Random people inside an image of (H, W), some keypoints unlabeled (v = 0 at 0, 0)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    if num_people == 0:
        return annotations_to_instances([], image_size)  # gt_boxes and gt_classes only
    instances = Instances(image_size)
    xy = torch.rand(num_people, num_keypoints, 2, generator=generator) * torch.tensor(
        [width - 1, height - 1]
    )
    v = torch.randint(0, 3, (num_people, num_keypoints), generator=generator).float()
    xy[v == 0] = 0
    instances.gt_keypoints = Keypoints(torch.cat([xy, v[..., None]], dim=-1))
    instances.gt_area = torch.rand(num_people, generator=generator) * height * width / 4 + 1
    return instances


def image(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def training_batch(sizes_and_people, num_keypoints: int = 17):
    return [
        {
            "image": image(height, width, seed),
            "instances": person_instances((height, width), people, num_keypoints, seed),
        }
        for seed, ((height, width), people) in enumerate(sizes_and_people)
    ]


def train_step(model: GroupPose, batch) -> dict:
    """One SGD step; returns the losses and checks that trainable parameters changed."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if n in before and
               not torch.equal(before[n], p.detach())]
    assert any(n.startswith("backbone.res3") for n in changed)
    assert any(n.startswith("decoder.") for n in changed)
    assert any(n.startswith("query_selection.") for n in changed)
    return losses
