"""Browser demo: upload an image or take a webcam picture, see the poses, download them as JSON.

    pip install --no-build-isolation -e ".[app]"          # Gradio
    python -m grouppose.app --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml \
        --weights model.pth                               # or: --onnx grouppose.onnx

``grouppose.app.poses`` holds the logic (checking an upload, finding and drawing the poses,
the JSON) as plain functions that need no browser and no Gradio; ``grouppose.app.page`` lays
them out as a Gradio page, and ``python -m grouppose.app`` serves it (on 127.0.0.1 unless
``--host`` says otherwise, without analytics or share links: it needs no network).
"""

from grouppose.app.poses import MAX_PIXELS, PoseApp, UploadError, load_upload, poses_to_dict

__all__ = ["MAX_PIXELS", "PoseApp", "UploadError", "load_upload", "poses_to_dict"]
