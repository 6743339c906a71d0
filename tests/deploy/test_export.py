"""torch.export of Group Pose inference: the exported program computes what the eager model does.
"""

import pytest
import torch
from detectron2.modeling import build_model
from helpers.tiny_grouppose import NUM_INSTANCES, tiny_config

from grouppose.deploy import GroupPoseExportModule, export_grouppose

HEIGHT, WIDTH = 64, 96
NUM_KEYPOINTS = 17
DEFORMABLE_ATTENTION_LAYERS = 3  # 1 encoder + 2 decoder layers


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def exported(model):
    return export_grouppose(model, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def image():
    """(3, H, W) RGB 0..255, unlike the all-zero example the program was exported with."""
    return torch.rand((3, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(1)) * 255


def test_exported_outputs_equal_eager_outputs(model, exported, image):
    module = GroupPoseExportModule(model)
    normalized = module.normalize(image[None])
    with torch.no_grad():
        eager_scores, eager_keypoints = module(normalized)
    scores, keypoints = exported.module()(normalized)

    assert scores.shape == (1, NUM_INSTANCES)
    assert keypoints.shape == (1, NUM_INSTANCES, NUM_KEYPOINTS, 3)
    torch.testing.assert_close(scores, eager_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(keypoints, eager_keypoints, rtol=0, atol=1e-4)


def test_exported_outputs_equal_the_detectron2_models_instances(model, exported, image):
    """Same poses, same order as ``model([{"image": ...}])`` (the top N, unthresholded)."""
    with torch.no_grad():
        instances = model([{"image": image}])[0]["instances"]
    scores, keypoints = exported.module()(GroupPoseExportModule(model).normalize(image[None]))

    assert len(instances) == NUM_INSTANCES
    torch.testing.assert_close(scores[0], instances.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(keypoints[0], instances.pred_keypoints, rtol=0, atol=1e-4)


def test_deformable_attention_is_exported_as_the_custom_op(exported):
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.grouppose.ms_deform_attn.default) == (
        DEFORMABLE_ATTENTION_LAYERS
    )


def test_saved_program_loads_and_runs(model, exported, image, tmp_path):
    path = tmp_path / "grouppose.pt2"
    torch.export.save(exported, path)
    normalized = GroupPoseExportModule(model).normalize(image[None])

    loaded = torch.export.load(path).module()(normalized)

    for actual, expected in zip(loaded, exported.module()(normalized)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_old_import_path_warns_and_forwards():
    """grouppose.export (deprecated) gives the same objects, warning with the new import."""
    import grouppose.export as old

    with pytest.warns(DeprecationWarning, match="from grouppose.deploy import export_grouppose"):
        assert old.export_grouppose is export_grouppose
    with pytest.warns(DeprecationWarning,
                      match="from grouppose.deploy import GroupPoseExportModule"):
        from grouppose.export import GroupPoseExportModule as OldModule
    assert OldModule is GroupPoseExportModule
    with pytest.raises(AttributeError, match="no attribute 'export_onnx'"):
        old.export_onnx  # noqa: B018


def test_export_rejects_bad_sizes(model):
    with pytest.raises(ValueError, match="height, width and batch_size must be positive"):
        export_grouppose(model, 0, WIDTH)


def test_deploy_doc_export_snippet_runs(tmp_path, monkeypatch):
    """docs/deploy.md's torch.export code block, as written, on the tiny model: only the config,
    the weights file and the size are swapped for small ones (each must be in the block)."""
    from helpers.tiny_grouppose import REPO_ROOT, save_tiny_model

    readme = (REPO_ROOT / "docs" / "deploy.md").read_text()
    section = readme[readme.index("## torch.export"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    config_file = save_tiny_model(tmp_path)
    swaps = {"configs/COCO-Keypoints/grouppose_R50_60e.yaml": str(config_file),
             '"model.pth"': repr(str(tmp_path / "tiny_model.pth")),
             "800": str(HEIGHT), "1216": str(WIDTH)}
    for written, small in swaps.items():
        assert written in code, written
        code = code.replace(written, small)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/deploy.md", "exec"), namespace)
    scores, keypoints = namespace["scores"], namespace["keypoints"]
    assert scores.shape == (1, NUM_INSTANCES)
    assert keypoints.shape == (1, NUM_INSTANCES, NUM_KEYPOINTS, 3)
    assert not scores.requires_grad and not keypoints.requires_grad
    assert (tmp_path / "grouppose.pt2").is_file()
