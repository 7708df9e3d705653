"""The body registry's face bodies: IR-ResNet, MobileFaceNet, the face-stem torchvision ResNets
and timm models; shapes, parameter counts against the papers, and the errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torchvision import models

from fvloss.bodies import BODIES, build_body
from fvloss.bodies.iresnet import LAYERS
from fvloss.bodies.mobilefacenet import BOTTLENECKS
from fvloss.model import EmbeddingNet

SMALL = ["iresnet18", "iresnet34", "mobilefacenet", "resnet18_face", "resnet34_face"]
NO_WEIGHTS = [*SMALL, "iresnet50", "iresnet100", "resnet50_face"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running stats are buffers)


def iresnet_params(layers: tuple[int, ...], img_size: int = 112, emb_dim: int = 512) -> int:
    """IR-ResNet + EmbeddingNet neck, counted from the architecture (sec. 3.4, Fig. 7)."""
    n = 9 * 3 * 64 + bn(64) + 64  # stem: conv3x3, BN, PReLU
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), layers):
        for i in range(blocks):
            c = cin if i == 0 else width
            n += bn(c) + 9 * c * width + bn(width) + width + 9 * width * width + bn(width)
            if i == 0:  # projection shortcut: conv1x1 + BN
                n += c * width + bn(width)
        cin = width
    n += bn(512)  # output BN2d (the neck skips its own first BN)
    return n + 512 * (img_size // 16) ** 2 * emb_dim + bn(emb_dim)  # FC (no bias) + BN1d


def mobilefacenet_params(img_size: int = 112, emb_dim: int = 128) -> int:
    """MobileFaceNet (Table 1) + neck; every conv is followed by BN, all but linear by PReLU."""
    n = 9 * 3 * 64 + bn(64) + 64 + 9 * 64 + bn(64) + 64  # conv3x3 s2, depthwise conv3x3
    cin = 64
    for t, c, reps, _ in BOTTLENECKS:
        for _ in range(reps):
            h = cin * t
            n += cin * h + bn(h) + h + 9 * h + bn(h) + h + h * c + bn(c)
            cin = c
    n += cin * 512 + bn(512) + 512  # conv1x1 512
    n += 512 * (img_size // 16) ** 2 + bn(512)  # linear GDConv + BN
    return n + 512 * emb_dim + bn(emb_dim)  # the paper's linear conv1x1 128 + BN = the neck


@pytest.mark.parametrize(
    ("arch", "published"),
    [("iresnet18", 24.0e6), ("iresnet34", 34.1e6), ("iresnet50", 43.6e6), ("iresnet100", 65.2e6)],
)
def test_iresnet_param_count(arch: str, published: float) -> None:
    net = EmbeddingNet(arch, emb_dim=512, img_size=112)
    n = n_params(net)
    assert n == iresnet_params(LAYERS[int(arch[len("iresnet") :])])
    # insightface's iresnet, whose FC has a bias (+512): within rounding of its numbers
    assert abs(n - published) / published < 0.01


def test_mobilefacenet_param_count() -> None:
    n = n_params(EmbeddingNet("mobilefacenet", emb_dim=128, img_size=112))
    assert n == mobilefacenet_params() == 1_003_136
    # Table 2 says 0.99M; the 7552 per-channel PReLU slopes account for the 1.3% difference
    assert abs(n - 0.99e6) / 0.99e6 < 0.015


def test_resnet_face_param_count() -> None:
    # only the stem differs from torchvision's: conv 3x3x3x64 instead of 7x7x3x64
    for depth in (18, 34, 50):
        ref = getattr(models, f"resnet{depth}")(weights=None)
        ref.fc = nn.Identity()
        face = build_body(f"resnet{depth}_face", 112)
        assert n_params(face) == n_params(ref) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64


@pytest.mark.parametrize("arch", SMALL)
@pytest.mark.parametrize("img_size", [112, 64])
@torch.no_grad()
def test_output_shape(arch: str, img_size: int) -> None:
    body = build_body(arch, img_size).eval()
    out = body(torch.randn(1, 3, img_size, img_size))
    assert out.shape == (1, body.out_features)


def test_out_features() -> None:
    assert build_body("iresnet18", 112).out_features == 512 * 7 * 7
    assert build_body("iresnet18", 64).out_features == 512 * 4 * 4
    assert build_body("mobilefacenet", 64).out_features == 512
    assert build_body("resnet50_face", 64).out_features == 2048


@pytest.mark.parametrize(("img_size", "side"), [(112, 7), (64, 4)])
@torch.no_grad()
def test_map_size(img_size: int, side: int) -> None:
    x = torch.randn(1, 3, img_size, img_size)
    ir = build_body("iresnet18", img_size).eval()
    assert ir.features(x).shape == (1, 512, side, side)
    mfn = build_body("mobilefacenet", img_size).eval()
    assert mfn.features(x).shape == (1, 512, side, side)
    assert mfn.gdconv[0].kernel_size == (side, side)


@torch.no_grad()
def test_resnet_face_stem_keeps_resolution() -> None:
    maps = {}
    for arch in ("resnet34", "resnet34_face"):
        net = build_body(arch, 64).eval()
        net.layer4.register_forward_hook(lambda m, i, o, a=arch: maps.__setitem__(a, o.shape))
        net(torch.randn(1, 3, 64, 64))
    assert maps["resnet34"][-2:] == (2, 2)
    assert maps["resnet34_face"][-2:] == (8, 8)


@pytest.mark.parametrize("arch", ["iresnet18", "mobilefacenet", "resnet18_face"])
def test_train_step(arch: str) -> None:
    net = EmbeddingNet(arch, emb_dim=32, img_size=64).train()
    emb = net(torch.randn(2, 3, 64, 64))
    assert emb.shape == (2, 32)
    emb.pow(2).sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_iresnet_output_structure() -> None:
    net = EmbeddingNet("iresnet18", emb_dim=64, img_size=112)
    assert net.body.out_normalized
    bn2d, drop, flat = net.body.output
    assert isinstance(bn2d, nn.BatchNorm2d) and bn2d.num_features == 512
    assert isinstance(drop, nn.Dropout) and drop.p == 0.0
    assert isinstance(flat, nn.Flatten)
    # the neck skips its first BN (the body's BN2d is it): dropout -> FC -> BN1d
    assert isinstance(net.neck[0], nn.Identity)
    assert net.neck[2].in_features == 512 * 7 * 7 and net.neck[2].bias is None
    assert isinstance(net.neck[3], nn.BatchNorm1d)
    # torchvision bodies keep the full neck
    assert isinstance(EmbeddingNet("resnet18_face").neck[0], nn.BatchNorm1d)


def test_registered() -> None:
    for name in [*NO_WEIGHTS, "resnet34"]:
        assert name in BODIES and BODIES[name].summary


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown arch 'resnet35'") as e:
        build_body("resnet35")
    assert "iresnet50" in str(e.value) and "mobilefacenet" in str(e.value)


@pytest.mark.parametrize("arch", ["iresnet18", "mobilefacenet"])
def test_img_size_not_divisible(arch: str) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        build_body(arch, 100)


@pytest.mark.parametrize("arch", NO_WEIGHTS)
def test_pretrained_without_weights(arch: str) -> None:
    with pytest.raises(ValueError, match="pretrained weights"):
        build_body(arch, 112, pretrained=True)


def test_timm_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes ``import timm`` fail
    with pytest.raises(ImportError, match=r"pip install fvloss\[timm\]"):
        build_body("timm:resnet10t")


def test_timm_body() -> None:
    pytest.importorskip("timm")
    net = EmbeddingNet("timm:resnet10t", emb_dim=16, img_size=64).eval()
    assert net.body.out_features == 512
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 16)
    with pytest.raises(ValueError, match="unknown timm model 'resnet10tt'"):
        build_body("timm:resnet10tt")


def test_timm_fixed_size_model_is_built_for_img_size() -> None:
    pytest.importorskip("timm")
    net = EmbeddingNet("timm:vit_tiny_patch16_224", emb_dim=16, img_size=64).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 16)  # 224 px positions would fail
