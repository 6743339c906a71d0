#!/usr/bin/env python
"""Group Pose demo: draw the poses found in images, a folder, a video or a webcam stream.

    python demo.py --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml \
        --input photos/ "more/*.jpg" --output vis/ --opts MODEL.WEIGHTS model.pth

Every option: ``python demo.py --help``; the code is ``grouppose.demo`` (also
``python -m grouppose.demo``).
"""

import sys

from grouppose.demo import main

if __name__ == "__main__":
    sys.exit(main())
