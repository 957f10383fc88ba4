"""Tiny models of each architecture family the speedup must handle (a few layers, tiny inputs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class VGGish(nn.Module):
    """Plain conv chain, max pooling, flatten (view) into Linear layers with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2), conv_bn(8, 16), conv_bn(16, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 24), nn.ReLU(), nn.Dropout(), nn.Linear(24, 5))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), 16 * 2 * 2)
        return self.classifier(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetish(nn.Module):
    """Stem, two stages of basic blocks with residual adds, global pooling, flatten, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class ResNeXtBlock(nn.Module):
    def __init__(self, channels: int, width: int, groups: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, width, 1)
        self.conv2 = conv_bn(width, width, 3, groups=groups)
        self.conv3 = nn.Sequential(nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.conv3(self.conv2(self.conv1(x))))


class ResNeXtish(nn.Module):
    """Bottlenecks with a grouped 3x3 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(ResNeXtBlock(16, 16, 4), ResNeXtBlock(16, 16, 4))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseNetish(nn.Module):
    """Dense block: every layer reads the concatenation of all earlier outputs."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layers = nn.ModuleList([DenseLayer(8 + i * growth, growth) for i in range(3)])
        self.norm = nn.BatchNorm2d(8 + 3 * growth)
        self.fc = nn.Linear(8 + 3 * growth, 5)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = F.relu(self.norm(torch.cat(features, 1)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1, se: bool = False, act=nn.ReLU6) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = conv_bn(cin, hidden, 1, act=act)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.use_res else out


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduce: int = 4, gate=nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduce, 1)
        self.fc2 = nn.Conv2d(channels // reduce, channels, 1)
        self.gate = gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


class MobileNetV2ish(nn.Module):
    """Inverted residuals: expand, depthwise, project, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2, act=nn.ReLU6)
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 3), InvertedResidual(8, 12, 3, 2), InvertedResidual(12, 12, 3))
        self.head = conv_bn(12, 24, 1, act=nn.ReLU6)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, 5))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1))


class MobileNetV3ish(nn.Module):
    """Inverted residuals with hardswish and squeeze-excitation gates."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2, act=nn.Hardswish)
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 2, se=True, act=nn.Hardswish),
                                    InvertedResidual(8, 12, 3, 2, se=True, act=nn.Hardswish))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class EfficientNetish(nn.Module):
    """MBConv with SiLU and a sigmoid squeeze-excitation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, act=nn.SiLU)
        block = InvertedResidual(8, 8, 4, act=nn.SiLU)
        block.se = SqueezeExcite(32, 4, nn.Sigmoid)
        self.block = block
        self.head = conv_bn(8, 16, 1, act=nn.SiLU)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.head(self.block(self.stem(x))).mean([2, 3]))


@torch.fx.wrap
def stochastic_depth(input, p: float, mode: str, training: bool = True):
    """As ``torchvision.ops.stochastic_depth`` (also an fx leaf function): drops whole samples
    (``mode="row"``) or the whole batch while training; the identity in eval mode."""
    if not training or p == 0.0:
        return input
    survival = 1.0 - p
    size = [input.shape[0]] + [1] * (input.dim() - 1) if mode == "row" else [1] * input.dim()
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival)
    return input * noise / survival


class MBConv(nn.Module):
    """torchvision's EfficientNet block: expand, depthwise, squeeze-excitation, project, stochastic
    depth on the residual branch."""

    def __init__(self, channels: int, expand: int, p: float) -> None:
        super().__init__()
        hidden = channels * expand
        self.block = nn.Sequential(conv_bn(channels, hidden, 1, act=nn.SiLU),
                                   conv_bn(hidden, hidden, 3, groups=hidden, act=nn.SiLU),
                                   SqueezeExcite(hidden, 4, nn.Sigmoid),
                                   nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels)))
        self.p = p

    def forward(self, x):
        result = stochastic_depth(self.block(x), self.p, "row", self.training)
        result += x
        return result


class EfficientNetB0ish(nn.Module):
    """EfficientNet stages with residual MBConv blocks and stochastic depth (torchvision's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(8, 4, 0.1), MBConv(8, 4, 0.2))
        self.head = conv_bn(8, 16, 1, act=nn.SiLU)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 5))

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1)
        return self.classifier(x)


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
                                    nn.BatchNorm2d(half), conv_bn(half, half, 1))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), 1), 2)


class ShuffleNetish(nn.Module):
    """ShuffleNetV2 units: chunk, branch with depthwise conv, concat, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.conv_last = conv_bn(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(self.conv_last(self.units(self.stem(x))).mean([2, 3]))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 4, 1)
        self.b2 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, 6, 3))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 4, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)


class Inceptionish(nn.Module):
    """Parallel branches concatenated, twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.mixed1 = InceptionBlock(8)
        self.mixed2 = InceptionBlock(14)
        self.fc = nn.Linear(14, 5)

    def forward(self, x):
        x = self.mixed2(self.mixed1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        return shortcut + x.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    """Depthwise 7x7, LayerNorm on channels-last, Linear MLP, layer scale, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, 2)
        self.blocks = nn.Sequential(ConvNeXtBlock(8), ConvNeXtBlock(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean([-2, -1]))


class Attention(nn.Module):
    """Hand-written multi-head self-attention (timm style: one qkv Linear)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, builtin: bool) -> None:
        super().__init__()
        self.builtin = builtin
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if builtin else Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        y = self.norm1(x)
        if self.builtin:
            y = self.attn(y, y, y, need_weights=False)[0]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTish(nn.Module):
    """Patch embedding, class token, position embedding, attention blocks, head."""

    def __init__(self, dim: int = 16, heads: int = 4, builtin: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.blocks = nn.Sequential(ViTBlock(dim, heads, builtin), ViTBlock(dim, heads, builtin))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class Conv1dNet(nn.Module):
    """Conv1d chain with a grouped and a depthwise convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.b1 = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.c3(F.relu(self.c2(x))))
        return self.fc(F.adaptive_max_pool1d(x, 1).squeeze(-1))


FAMILIES = {
    "vgg": (VGGish, (2, 3, 8, 8)),
    "resnet": (ResNetish, (2, 3, 8, 8)),
    "resnext": (ResNeXtish, (2, 3, 8, 8)),
    "densenet": (DenseNetish, (2, 3, 8, 8)),
    "mobilenetv2": (MobileNetV2ish, (2, 3, 16, 16)),
    "mobilenetv3": (MobileNetV3ish, (2, 3, 16, 16)),
    "efficientnet": (EfficientNetish, (2, 3, 8, 8)),
    "efficientnet_b0": (EfficientNetB0ish, (2, 3, 16, 16)),
    "shufflenet": (ShuffleNetish, (2, 3, 8, 8)),
    "inception": (Inceptionish, (2, 3, 8, 8)),
    "convnext": (ConvNeXtish, (2, 3, 8, 8)),
    "vit": (ViTish, (2, 3, 8, 8)),
    "vit_mha": (lambda: ViTish(builtin=True), (2, 3, 8, 8)),
    "conv1d": (Conv1dNet, (2, 4, 10)),
}
