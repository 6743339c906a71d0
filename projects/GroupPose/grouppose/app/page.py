"""The browser demo's Gradio page (``pip install -e ".[app]"``): an image upload or a webcam
picture in; the drawn poses, a score threshold slider and the poses as JSON out.

Offline by design: analytics are switched off before Gradio is imported, there are no share
links, server-side rendering (which needs Node.js) is off, and Gradio's default theme uses the
fonts shipped in its package, so the page loads no asset from another host.
"""

import atexit
import json
import os
import shutil
import tempfile
from typing import Optional

# Read by Gradio when a page is built and launched: no usage reports, no version check.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402 (after the environment variable)

from grouppose.app.poses import PoseApp  # noqa: E402
from grouppose.image_io import IMAGE_EXTENSIONS  # noqa: E402

__all__ = ["build_page", "launch"]

_TITLE = "Group Pose"
_INTRO = (
    "# Group Pose\nUpload an image or take a webcam picture: the people's poses are drawn, "
    "and listed as JSON to download. The slider keeps the poses scoring above it."
)
# Uploads larger than this never reach the app (the pixel count is checked after upload).
_MAX_FILE_SIZE = "200mb"


class _JsonFiles:
    """Writes each answer's poses to ``<temporary folder>/<unique>/poses.json`` for the
    download link (Gradio serves a copy); the folder is removed when the process exits."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="grouppose_app_")
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)

    def write(self, text: str) -> str:
        path = os.path.join(tempfile.mkdtemp(dir=self.root), "poses.json")
        with open(path, "w") as f:
            f.write(text)
        return path


def build_page(app: PoseApp, score_threshold: float) -> gr.Blocks:
    """The page of ``app``, its slider starting at ``score_threshold``."""
    files = _JsonFiles()

    def run(upload, threshold: float):
        answer = app.answer(upload, threshold)
        download = None
        if answer.poses is not None:
            download = files.write(json.dumps(answer.poses, indent=1))
        # The upload is kept (State) so that moving the slider redraws it.
        return upload, answer.drawing, answer.poses, download, answer.message

    with gr.Blocks(title=_TITLE, analytics_enabled=False) as page:
        gr.Markdown(_INTRO)
        last_upload = gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=list(IMAGE_EXTENSIONS),
                                 type="filepath", elem_id="upload")
                webcam = gr.Image(label="Webcam", sources=["webcam"], type="numpy",
                                  image_mode="RGB", elem_id="webcam")
                threshold = gr.Slider(0.0, 1.0, value=score_threshold, step=0.01,
                                      label="Score threshold", elem_id="threshold")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                drawing = gr.Image(label="Poses", type="numpy", format="png", interactive=False,
                                   elem_id="drawing")
                poses = gr.JSON(label="Poses (JSON)", elem_id="poses")
                download = gr.File(label="Download the poses", interactive=False,
                                   elem_id="download")
        outputs = [last_upload, drawing, poses, download, message]
        # One queue for the three events: the model runs one image at a time.
        queue = {"concurrency_id": "model", "concurrency_limit": 1}
        upload.upload(run, [upload, threshold], outputs, **queue)
        webcam.input(run, [webcam, threshold], outputs, **queue)
        # Dragging fires many events: the model reruns for the last one when busy.
        threshold.input(run, [last_upload, threshold], outputs, trigger_mode="always_last",
                        **queue)
    return page


def launch(page: gr.Blocks, host: str, port: Optional[int], block: bool = True) -> None:
    """Serve ``page`` on ``host``:``port`` (None: Gradio's first free port from 7860)."""
    page.launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True,
        max_file_size=_MAX_FILE_SIZE, prevent_thread_lock=not block,
    )
