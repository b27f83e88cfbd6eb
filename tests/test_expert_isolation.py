"""One bad image never takes its batch down: the expert protocol retries image by image."""

from __future__ import annotations

import numpy as np

from annotators.base import Detection, Expert, ImageInput


class FlakyDetector(Expert):
    name = "detection"

    def load(self) -> None:
        pass

    def weights_sha256(self) -> str:
        return "0" * 64

    def predict(self, batch):
        if any(item.image_id == 2 for item in batch):
            raise RuntimeError("cannot handle image 2")
        return [[Detection("person", 0, 0.9, [0, 0, item.width, item.height])] for item in batch]


def test_a_failing_image_fails_alone():
    image = np.zeros((16, 24, 3), np.uint8)
    outputs = FlakyDetector({"backend": "test"})([ImageInput(i, image) for i in (1, 2, 3)])
    assert [o.image_id for o in outputs] == [1, 2, 3]
    assert [o.ok for o in outputs] == [True, False, True]
    assert outputs[0].records[0].box == [0, 0, 24, 16]
    assert "cannot handle image 2" in outputs[1].error and outputs[1].records == []
