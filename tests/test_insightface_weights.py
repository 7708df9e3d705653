"""arcface_torch (insightface) IR-ResNet state dicts onto fvloss's (fvloss.bodies.insightface).

The arcface_torch-layout state dicts here are made from fvloss's own modules by a renaming
written in this file (never from insightface's code: ``bench/import_weights.py`` checks against
arcface_torch's own network), plus an ``fc`` bias with the BatchNorm's mean moved by the same
amount, so the arcface_torch-layout network computes what the fvloss network does.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fvloss.bodies.insightface import (
    SUPPORTED,
    _expected,
    insightface_state_dict,
    load_insightface,
)
from fvloss.model import EmbeddingNet

ARCH = "iresnet18"  # the smallest supported; arcface_torch's FC fixes 112 px
_BLOCK = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")
# fvloss module path -> arcface_torch's (its backbones/iresnet.py attribute names)
_RENAME: list[tuple[str, object]] = [
    (r"^body\.stem\.0\.", "conv1."),
    (r"^body\.stem\.1\.", "bn1."),
    (r"^body\.stem\.2\.", "prelu."),
    (
        r"^body\.stages\.(\d)\.(\d+)\.residual\.(\d)\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{_BLOCK[int(m[3])]}.",
    ),
    (
        r"^body\.stages\.(\d)\.(\d+)\.shortcut\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.",
    ),
    (r"^body\.output\.0\.", "bn2."),
    (r"^neck\.2\.", "fc."),
    (r"^neck\.3\.", "features."),
]


def _arcface_key(key: str) -> str:
    for pattern, repl in _RENAME:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise AssertionError(f"no arcface_torch name for {key}")


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights, BN statistics and PReLU slopes away from their initial values (a BN in
    training mode, or a stat left out, would then change the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return net.eval()


def arcface_layout(net: EmbeddingNet, seed: int = 1) -> dict[str, torch.Tensor]:
    """``net`` as an arcface_torch iresnet state dict: its keys renamed, an ``fc.bias`` b added
    (after ``fc.weight``, where arcface_torch registers it) and ``features.running_mean``
    moved to ``mean + b``, so that ``BN_{mean + b}(Wx + b) = BN_mean(Wx)`` = ``net``."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for k, v in net.state_dict().items():
        out[_arcface_key(k)] = v.clone()
        if k == "neck.2.weight":
            out["fc.bias"] = torch.rand(v.shape[0], generator=g) * 4 - 2
    out["features.running_mean"] += out["fc.bias"]
    return out


def unfolded(net: EmbeddingNet, arc: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """arcface_torch's output computed by hand from its layout: features(fc(x) + bias)."""
    f = net.body(x)
    z = F.linear(f, arc["fc.weight"], arc["fc.bias"])
    return F.batch_norm(
        z,
        arc["features.running_mean"],
        arc["features.running_var"],
        arc["features.weight"],
        arc["features.bias"],
        training=False,
        eps=1e-5,
    )


@pytest.fixture(scope="module")
def net() -> EmbeddingNet:
    torch.manual_seed(0)
    return randomize(EmbeddingNet(ARCH, 512, img_size=112))


@pytest.fixture(scope="module")
def arc(net) -> dict[str, torch.Tensor]:
    return arcface_layout(net)


@pytest.fixture(scope="module")
def arc_file(arc, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("insightface") / "backbone.pth"
    torch.save(arc, path)
    return path


def test_expected_layout_is_embeddingnets():
    """The keys and shapes the map aims at are EmbeddingNet's (it cannot import model.py)."""
    for arch in SUPPORTED:
        with torch.device("meta"):
            sd = EmbeddingNet(arch, 512, img_size=112).state_dict()
        assert _expected(arch) == {k: v.shape for k, v in sd.items()}, arch
        assert list(_expected(arch)) == list(sd), arch  # registration order too


def test_renaming_keeps_registration_order(net, arc):
    """fvloss's order is arcface_torch's: the n-th tensor of one is the n-th of the other."""
    assert [k for k in arc if k != "fc.bias"] == [_arcface_key(k) for k in net.state_dict()]


def test_mapped_embeddings_equal_the_arcface_layouts(net, arc):
    mapped = insightface_state_dict(arc, ARCH)
    assert list(mapped) == list(net.state_dict())
    # the fold: running_mean - b gives back the fvloss net's own mean
    b = arc["fc.bias"]
    assert torch.equal(
        mapped["neck.3.running_mean"], (arc["features.running_mean"].double() - b).float()
    )
    torch.testing.assert_close(mapped["neck.3.running_mean"], net.neck[3].running_mean)
    fresh = EmbeddingNet(ARCH, 512, img_size=112)
    fresh.load_state_dict(mapped)  # strict
    fresh.eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = unfolded(net, arc, x)  # arcface_torch's computation, bias added
        got = fresh(x)
        assert ref.abs().max() > 0.5  # not a degenerate all-zero output
        assert (got - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(got, net(x), rtol=0, atol=1e-5)


def test_fp16_save_and_missing_counters(arc):
    half = {k: v.half() if v.is_floating_point() else v for k, v in arc.items()}
    half = {k: v for k, v in half.items() if not k.endswith("num_batches_tracked")}
    mapped = insightface_state_dict(half, ARCH)
    assert all(v.dtype == torch.float32 for k, v in mapped.items() if "num_batches" not in k)
    assert int(mapped["neck.3.num_batches_tracked"]) == 0  # filled in
    assert torch.equal(mapped["body.stem.0.weight"], arc["conv1.weight"].half().float())


def test_wrong_shape_names_key_and_shapes(arc):
    bad = dict(arc, **{"layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)})
    with pytest.raises(ValueError) as e:
        insightface_state_dict(bad, ARCH)
    msg = str(e.value)
    assert "'layer2.0.conv1.weight'" in msg and "(128, 64, 1, 1)" in msg
    assert "(128, 64, 3, 3)" in msg and "body.stages.1.0.residual.1.weight" in msg
    bad = dict(arc, **{"fc.bias": torch.zeros(256)})
    with pytest.raises(ValueError, match=r"'fc.bias' has shape \(256,\).*\(512,\)"):
        insightface_state_dict(bad, ARCH)


def test_missing_key_is_named(arc):
    for key in ("layer3.1.bn2.running_var", "fc.bias", "layer4.0.downsample.1.weight"):
        bad = {k: v for k, v in arc.items() if k != key}
        with pytest.raises(ValueError, match=rf"missing key '{re.escape(key)}'"):
            insightface_state_dict(bad, ARCH)


def test_unexpected_key_and_wrong_arch(arc):
    with pytest.raises(ValueError, match="unexpected key 'head.weight'"):
        insightface_state_dict(dict(arc, **{"head.weight": torch.zeros(3)}), ARCH)
    # an iresnet18 file imported as iresnet34: the first key it lacks, and what the file holds
    with pytest.raises(ValueError, match=r"missing key 'layer1.2.bn1.weight'.*iresnet18"):
        insightface_state_dict(arc, "iresnet34")


def test_mobilefacenet_and_other_archs_refused(arc):
    with pytest.raises(ValueError, match="scale=2"):
        insightface_state_dict(arc, "mobilefacenet")
    with pytest.raises(ValueError, match="supported: iresnet18, iresnet34, iresnet50, iresnet100"):
        insightface_state_dict(arc, "resnet18")
    mbf_like = {"layers.0.layers.0.weight": torch.zeros(128, 3, 3, 3)}
    with pytest.raises(ValueError, match="looks like arcface_torch's MobileFaceNet"):
        insightface_state_dict(mbf_like, ARCH)


def test_load_plain_nested_and_ddp_files(arc, arc_file, tmp_path):
    plain = load_insightface(arc_file, ARCH)
    # arcface_torch's own training checkpoint nests the backbone beside the optimizer's state
    nested = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict_backbone": arc}, nested)
    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in arc.items()}, ddp)
    for other in (load_insightface(nested, ARCH), load_insightface(ddp, ARCH)):
        assert list(other) == list(plain)
        assert all(torch.equal(other[k], plain[k]) for k in plain)


class _Payload:
    """An object whose unpickling runs code (here: creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the junk file's protocol 4
def test_pickle_carrying_code_is_refused(arc, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({**arc, "fc.bias": _Payload(marker)}, evil)
    with pytest.raises(ValueError, match=rf"{re.escape(str(evil))}: not a readable weights file"):
        load_insightface(evil, ARCH)
    assert not marker.exists()  # refused before anything ran
    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps([1, 2]) + b"not a zip")
    with pytest.raises(ValueError, match="junk.pth: not a readable weights file"):
        load_insightface(junk, ARCH)
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):
        load_insightface(tmp_path / "nope.pth", ARCH)


def test_a_file_that_does_not_fit_is_named(arc, tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({k: v for k, v in arc.items() if not k.startswith("layer4.1.")}, path)
    with pytest.raises(ValueError, match=r"cut.pth: arcface_torch iresnet18 .*'layer4.1.bn1"):
        load_insightface(path, ARCH)
    path = tmp_path / "list.pth"
    torch.save({"epoch": 1, "weights": [1, 2]}, path)
    with pytest.raises(ValueError, match="list.pth: not a state dict"):
        load_insightface(path, ARCH)
