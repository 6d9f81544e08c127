"""A small real CNN: a CIFAR-style ResNet (3 stages of basic residual blocks) in torch.

Random weights from a fixed seed (throughput does not depend on them), 32x32 RGB input,
one torch thread per instance so co-located instances do not fight over the cores.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from demo_common import parameters, run_batched
from torch import nn

torch.set_num_threads(1)
with contextlib.suppress(RuntimeError):  # already set in this process
    torch.set_num_interop_threads(1)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.short(x))


class SmallResNet(nn.Module):
    def __init__(self, width: int, blocks: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(c, c_out, stride))
                c = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        p = parameters(args)
        torch.manual_seed(int(p.get("demo.seed", "2")))
        self.net = SmallResNet(
            int(p.get("demo.width", "16")),
            int(p.get("demo.blocks", "1")),
            int(p.get("demo.classes", "10")),
        ).eval()

    def forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(x.astype(np.float32, copy=False))).numpy()

    def execute(self, requests: list) -> list:
        return run_batched(pb_utils, requests, self.forward)
