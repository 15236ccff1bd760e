"""The PyTorch steps `train_step.py` and `inference.py` race against, in a process of their own.

TensorFlow and torchvision crash when imported into one process here, so the benchmarks
start this file as a child and talk to it over stdin/stdout, one JSON line each way:

    {"make": "r20-train", "precision": "bf16", "compile": false, "batch": 128, "images": 10000}
    -> {"ready": name} or {"error": message}
    {"run": name, "epochs": 2}     -> {"seconds": [t1, t2]}   (one timed epoch each)

The steps are what a PyTorch user writes: CIFAR ResNet-20 with option-A shortcuts (the
architecture `keras_resnet.build(20)` builds, 269,722 parameters), SGD Nesterov momentum 0.9
with weight decay 5e-4 in the optimizer, cross-entropy, channels-last, bf16 autocast or
float32, eager or `torch.compile`; torchvision's ResNet-50 at 224 px for the large model.
"""

import json
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:  # option A: the extra channels are zeros
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> nn.Module:
    n = (depth - 2) // 6
    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def make(spec: dict):
    """A closure that runs one epoch of `spec` over in-memory random data."""
    torch.manual_seed(0)
    large = spec["make"].startswith("r50")
    if large:
        import torchvision
        model, size = torchvision.models.resnet50(), 224
    else:
        model, size = cifar_resnet(20), 32
    model = model.to(memory_format=torch.channels_last)
    batch, steps = spec["batch"], spec["images"] // spec["batch"]
    x = torch.rand(batch * steps, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000 if large else 10, (batch * steps,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")
    training = spec["make"].endswith("train")
    if training:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)

        def step(xb, yb):
            with autocast:
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step(xb, yb):
            with torch.inference_mode(), autocast:
                model(xb).float()
    if spec.get("compile"):
        step = torch.compile(step)
    model.train(training)

    def epoch():
        for i in range(steps):
            step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    return epoch


def main():
    epochs = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "make" in request:
            name = request["name"]
            try:
                epochs[name] = make(request)
                epochs[name]()  # warm-up: allocation, autotuning, compilation
                reply = {"ready": name}
            except Exception as error:  # torch.compile needs a working C++ compiler
                reply = {"error": f"{type(error).__name__}: {error}"[:300]}
        else:
            seconds = []
            for _ in range(request["epochs"]):
                start = time.perf_counter()
                epochs[request["run"]]()
                seconds.append(time.perf_counter() - start)
            reply = {"seconds": seconds}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--info":
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    else:
        main()
