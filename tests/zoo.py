"""A zoo of torchvision-style blocks (written out by hand: torchvision is not a test
dependency) and a tiny Hugging Face ViT, for the in-place and zoo suites.

Every block takes ``inplace``: ``True`` is torchvision's code (``nn.ReLU(inplace=True)``,
``ReLU6(inplace=True)``, ``out += identity``, ``F.relu(x, inplace=True)``), ``False`` the
same computation without any in-place op. :func:`twins` builds both from one seed and
one ``state_dict``, so any difference between their influences is the library's.

Batch norms get random affine parameters and *calibrated* running statistics (a few
forward passes in train mode on random data with a cumulative average, then eval), so
that the activations are those of a network in use and not of the default ``(0, 1)``
statistics. Everything is float64 and in eval mode; nothing is built at import.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLASSES = 5
IMAGE = (3, 16, 16)

# --- ResNet -------------------------------------------------------------------------------


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck``: one ReLU module shared by its three uses, and
    ``out += identity`` written into ``bn3``'s output."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, inplace: bool = True) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=inplace)
        self.downsample = downsample
        self.stride = stride
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        if self.inplace:
            out += identity
        else:
            out = out + identity
        out = self.relu(out)

        return out


class TinyResNet(nn.Module):
    """torchvision's ``ResNet`` with bottlenecks: stem conv/bn/relu/maxpool, two stages,
    average pool, linear. ``(3, 16, 16)`` → 5 classes."""

    def __init__(self, inplace: bool = True, width: int = 8, classes: int = CLASSES) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=inplace)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(4, 2, inplace=inplace)
        self.layer2 = self._make_layer(6, 1, stride=2, inplace=inplace)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(6 * Bottleneck.expansion, classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, inplace: bool = True) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, inplace=inplace)]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, inplace=inplace))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


# --- MobileNetV2 --------------------------------------------------------------------------


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation with ``ReLU6(inplace=True)``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, inplace: bool = True) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=inplace),
        )


class InvertedResidual(nn.Module):
    """torchvision's ``InvertedResidual``: expand (1×1), depthwise (3×3), project (1×1 +
    batch norm, linear), and ``x + self.conv(x)`` when the shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, inplace: bool = True) -> None:
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, inplace=inplace))
        layers.extend(
            [
                Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, inplace=inplace),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TinyMobileNet(nn.Module):
    """torchvision's ``MobileNetV2`` layout: ``features`` (stem, inverted residuals with
    and without the residual connection, last 1×1 conv), functional average pool,
    ``classifier`` (dropout, linear)."""

    def __init__(self, inplace: bool = True, classes: int = CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, inplace=inplace),
            InvertedResidual(8, 8, 1, 1, inplace=inplace),  # residual, no expansion
            InvertedResidual(8, 12, 2, 4, inplace=inplace),  # strided: no residual
            InvertedResidual(12, 12, 1, 4, inplace=inplace),  # residual
            Conv2dNormActivation(12, 24, kernel_size=1, inplace=inplace),
        )
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(24, classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# --- DenseNet -----------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``: batch norm, in-place ReLU, 1×1 conv on the
    concatenated features, batch norm, in-place ReLU, 3×3 conv."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, inplace: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, input: Tensor | list[Tensor]) -> Tensor:
        prev_features = [input] if isinstance(input, Tensor) else input
        bottleneck_output = self.bn_function(prev_features)
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class _DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: each layer sees the concatenation of all before it."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, inplace: bool = True) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, inplace=inplace)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int, inplace: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class TinyDenseNet(nn.Module):
    """torchvision's ``DenseNet``: ``features`` (conv0/norm0/relu0/pool0, dense blocks,
    a transition, norm5), then ``F.relu(features, inplace=True)``, pool, ``classifier``."""

    def __init__(self, inplace: bool = True, growth_rate: int = 4, block_config: tuple[int, ...] = (2, 2), num_init_features: int = 8, bn_size: int = 2, classes: int = CLASSES) -> None:
        super().__init__()
        self.inplace = inplace
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=inplace)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, inplace=inplace)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2, inplace=inplace)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=self.inplace)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def as_sequential(model: nn.Module) -> nn.Sequential:
    """The same network as one plain ``nn.Sequential`` sharing the model's modules (their
    names kept: ``bn1``, ``features.norm0``, ...), so that the sequential realisation
    applies at cuts between its children. The modules' modes are left as they are."""
    if isinstance(model, TinyResNet):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "avgpool"]
        layers = [(n, model.get_submodule(n)) for n in names] + [("flatten", nn.Flatten(1)), ("fc", model.fc)]
    elif isinstance(model, TinyMobileNet):
        layers = [("features", model.features), ("pool", nn.AdaptiveAvgPool2d((1, 1))), ("flatten", nn.Flatten(1)), ("classifier", model.classifier)]
    elif isinstance(model, TinyDenseNet):
        layers = [
            ("features", model.features),
            ("relu", nn.ReLU(inplace=model.inplace)),
            ("pool", nn.AdaptiveAvgPool2d((1, 1))),
            ("flatten", nn.Flatten(1)),
            ("classifier", model.classifier),
        ]
    else:
        raise TypeError(f"as_sequential: not a zoo CNN ({type(model).__name__})")
    return nn.Sequential(OrderedDict(layers))


# --- building, calibrating, twins ---------------------------------------------------------

FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "resnet": TinyResNet,
    "mobilenet": TinyMobileNet,
    "densenet": TinyDenseNet,
}


def calibrate(model: nn.Module, shape: tuple[int, ...] = IMAGE, seed: int = 0, passes: int = 4, batch: int = 16) -> nn.Module:
    """Random batch-norm affine parameters, then running statistics from ``passes``
    forward passes in train mode on random images (cumulative average: the statistics
    are those of the data, not a blend with the defaults); ends in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen, dtype=dtype))
            m.bias.copy_(0.6 * torch.rand(m.bias.shape, generator=gen, dtype=dtype) - 0.3)
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(passes):
            model(torch.randn(batch, *shape, generator=gen, dtype=dtype))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def build(kind: str, inplace: bool = True, seed: int = 0) -> nn.Module:
    """One zoo model in float64 and eval mode, calibrated (weights from ``seed``)."""
    torch.manual_seed(seed)
    model = FACTORIES[kind](inplace=inplace).double()
    return calibrate(model, seed=seed)


def twins(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(with in-place ops, without)``: the same weights and statistics."""
    inplace = build(kind, inplace=True, seed=seed)
    plain = FACTORIES[kind](inplace=False).double()
    plain.load_state_dict(inplace.state_dict())
    return inplace, plain.eval()


# --- a tiny Hugging Face ViT --------------------------------------------------------------


def vit(seed: int = 0) -> nn.Module:
    """``ViTForImageClassification`` on ``(3, 16, 16)`` images, patch 4, hidden 16, two
    layers, two heads, 5 labels; random weights (nothing downloaded), float64, eval."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    with torch.no_grad():  # the default init gives nearly constant logits: spread them
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.normal_(0.0, 0.1)
    return model.double().eval()


def vit_block(model: nn.Module, i: int) -> str:
    """The name of the ``i``-th transformer block (``vit.layers.i`` in transformers 5,
    ``vit.encoder.layer.i`` before)."""
    names = dict(model.named_modules())
    for name in (f"vit.layers.{i}", f"vit.encoder.layer.{i}"):
        if name in names:
            return name
    raise LookupError(f"no transformer block {i} in {type(model).__name__}")


class Logits(nn.Module):
    """The model with its output reduced to the logits tensor (Captum needs a tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits


def images(n: int, gen: torch.Generator, shape: tuple[int, ...] = IMAGE, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(n, *shape, generator=gen, dtype=torch.float64)


def labelled(n_per_class: int, gen: torch.Generator, classes: int = CLASSES) -> dict[str, Any]:
    """``{"x": images, "y": labels}`` with ``n_per_class`` images of each class."""
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return {"x": images(len(y), gen), "y": y}
