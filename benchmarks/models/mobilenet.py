"""MobileNetV3-small (torchvision's layout, written out here: no torchvision), random weights.

Inverted residuals with depthwise convolutions, HardSwish, squeeze-excite (global average
pool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul) and BatchNorm, in ``eval()`` mode,
so the exporters fold or keep BatchNorm as they do for trained models.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models._common import Signature

# torchvision's mobilenet_v3_small table: kernel, expanded, out, squeeze-excite, activation,
# stride
SMALL = (
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
# Images used to set the BatchNorm statistics (see ``build``): enough for stable means.
CALIBRATION_IMAGES = 16


def divisible(v: float, by: int = 8) -> int:
    """Round to a multiple of ``by``, never more than 10% down (torchvision's rule)."""
    n = max(by, int(v + by / 2) // by * by)
    return n + by if n < 0.9 * v else n


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)
        self.relu, self.hsigmoid = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.hsigmoid(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, k: int, expanded: int, c_out: int, se: bool, act: str,
                 stride: int):
        super().__init__()
        act_cls = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, act=act_cls))
        layers.append(conv_bn(expanded, expanded, k, stride, groups=expanded, act=act_cls))
        if se:
            layers.append(SqueezeExcite(expanded, divisible(expanded / 4)))
        layers.append(conv_bn(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, classes: int = 1000, blocks: int | None = None):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        c = 16
        for k, exp, out, se, act, stride in SMALL[:blocks]:
            layers.append(InvertedResidual(c, k, exp, out, se, act, stride))
            c = out
        layers.append(conv_bn(c, 6 * c, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * c, 1024), nn.Hardswish(),
                                        nn.Dropout(0.2), nn.Linear(1024, classes))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(pixel_values)).flatten(1))


def build(image: int = 224, blocks: int | None = None) -> MobileNetV3Small:
    """Random weights with *calibrated* BatchNorm statistics; ``blocks`` keeps the first few
    inverted residuals (for tests: the first 5 have every kind: SE or not, ReLU or HardSwish,
    stride 2, residual).

    With fresh statistics (mean 0, var 1) the activations shrink or grow layer by layer and
    the logits barely depend on the image. So, like a trained network, each BatchNorm gets the
    mean and variance of what reaches it (one pass over random images in train mode), then a
    random affine (gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1^2)) so that folding it is not trivial.
    """
    model = MobileNetV3Small(blocks=blocks)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the batch statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(CALIBRATION_IMAGES, 3, image, image))
        for bn in norms:
            bn.momentum = 0.1
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
    return model.eval()


def signature(**_: object) -> Signature:
    return Signature(("pixel_values",), ("logits",),
                     {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
