#!/usr/bin/env python
"""Generate the synthetic multi-person keypoint dataset (COCO or CrowdPose format).

    python tools/make_synthetic_dataset.py --out datasets/synthetic_pose/train \\
        --num-images 2000 --seed 0
    python tools/make_synthetic_dataset.py --out /tmp/fake_root --num-images 400 --format crowdpose

COCO format writes OUT/annotations.json and OUT/images/ (register it with
``grouppose.data.register_synthetic_dataset(name, OUT)``); CrowdPose format writes the CrowdPose
release layout under OUT/crowdpose/ (``DETECTRON2_DATASETS=OUT`` makes crowdpose_* point at it).
Images are a function of (seed, image index) only: the same arguments give the same files.
"""

import argparse
import sys
import time
from typing import List, Optional

from grouppose.data.synthetic import (
    DEFAULT_IMAGE_SIZE,
    generate_synthetic_crowdpose,
    generate_synthetic_dataset,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("coco", "crowdpose"), default="coco",
                        help="coco: K = 17 keypoints; crowdpose: K = 14, CrowdPose layout")
    parser.add_argument("--min-size", type=int, default=DEFAULT_IMAGE_SIZE[0],
                        help="smallest image side (pixels)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_IMAGE_SIZE[1],
                        help="largest image side (pixels)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    image_size = (args.min_size, args.max_size)
    start = time.perf_counter()
    try:
        if args.format == "coco":
            written = [generate_synthetic_dataset(args.out, args.num_images, args.seed,
                                                  image_size)]
        else:
            written = list(generate_synthetic_crowdpose(args.out, args.num_images, args.seed,
                                                        image_size).values())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"{args.num_images} images in {seconds:.1f} s "
          f"({args.num_images / max(seconds, 1e-9):.0f} images/s); wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
