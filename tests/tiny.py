"""The tiny network of the test suite: ResNet-18 at width 0.25 on 32 px images, which trains a
step in well under a second on a CPU. A test that needs another field says only that field:
`tiny(image_size=64)`."""

from __future__ import annotations

import dataclasses

from simclr_med.config import ModelConfig

TINY = ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32)


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)
