"""Released arcface_torch (insightface) backbones as fvloss IR-ResNets.

insightface's ``recognition/arcface_torch`` releases its models (``ms1mv3_arcface_r50`` ...) as
``torch.save(backbone.state_dict())`` files. Its ``iresnet18/34/50/100`` are fvloss's
``iresnet18/34/50/100`` (:mod:`fvloss.bodies.iresnet`) plus :class:`~fvloss.model.EmbeddingNet`'s
neck, tensor for tensor and in registration order, under other names:

===========================================  ===============================================
arcface_torch                                fvloss ``EmbeddingNet(arch, 512, img_size=112)``
===========================================  ===============================================
``conv1`` ``bn1`` ``prelu``                  ``body.stem.0`` ``.1`` ``.2``
``layerS.B.bn1 conv1 bn2 prelu conv2 bn3``   ``body.stages.{S-1}.B.residual.0`` ... ``.5``
``layerS.B.downsample.0`` ``.1``             ``body.stages.{S-1}.B.shortcut.0`` ``.1``
``bn2``                                      ``body.output.0``
``fc`` (weight **and bias**)                 ``neck.2`` (weight only)
``features``                                 ``neck.3``
===========================================  ===============================================

The one difference is ``fc``'s bias: fvloss's embedding FC has none, because a BatchNorm1d
follows it. The bias is folded into that BatchNorm exactly: in eval mode
``BN(Wx + b) = (Wx + b - mu) / sqrt(var + eps) * gamma + beta = BN'(Wx)`` with
``BN'.running_mean = mu - b`` and every other statistic unchanged. In training mode a BatchNorm
subtracts the batch mean, which cancels ``b`` (and its gradient is zero), so fine-tuning the
folded network trains the same function too.

Input: arcface_torch feeds RGB 112x112 images normalised as ``(x / 255 - 0.5) / 0.5``
(``inference.py`` converts OpenCV's BGR to RGB; ``dataset.py`` decodes RecordIO with
``mx.image.imdecode``, RGB, and normalises with mean = std = 0.5), which is fvloss's own
``mean = std = 0.5`` on RGB images: an imported model needs ``img_size=112``, ``mean=0.5``,
``std=0.5``.

MobileFaceNet is not supported: arcface_torch's ``mbf`` is MobileFaceNet at ``scale=2``, a
128-channel stem and 128/256-channel stages where fvloss's (the paper's Table 1) has 64/128
(``layers.0.layers.0.weight`` is ``(128, 3, 3, 3)``, fvloss's ``body.features.0.0.weight``
``(64, 3, 3, 3)``), and its second 3x3 conv is grouped (``groups=64`` over 128 channels,
weight ``(128, 2, 3, 3)``), not depthwise. Same tensor count (333), other shapes and twice the
parameters (2.1M against 1.2M, buffers included): no renaming maps one onto the other.

The reader loads with ``weights_only=True``: a pickle that carries code is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .iresnet import LAYERS
from .registry import BODIES, build_body

__all__ = ["EMB_DIM", "IMG_SIZE", "SUPPORTED", "insightface_state_dict", "load_insightface"]

IMG_SIZE = 112  # arcface_torch's fc_scale = 7 * 7: 112 px inputs only
EMB_DIM = 512  # num_features of every released arcface_torch model
SUPPORTED = tuple(f"iresnet{d}" for d in LAYERS)

# fvloss's IBasicBlock.residual, in order, under arcface_torch's IBasicBlock names
_RESIDUAL = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")
_BN_COUNTER = "num_batches_tracked"
# where a checkpoint nests the backbone (arcface_torch's checkpoint_gpu_*.pt, common wrappers)
_NESTED = ("state_dict_backbone", "state_dict", "model", "backbone")

_MBF_WHY = (
    "arcface_torch's MobileFaceNet ('mbf') is not fvloss's: it is built at scale=2 (a "
    "128-channel stem and 128/256-channel stages where fvloss's has 64 and 64/128) with a "
    "grouped, not depthwise, second conv, so its tensors have other shapes (see the module "
    "fvloss.bodies.insightface)"
)


def _fvloss_name(key: str) -> str | None:
    """The fvloss ``EmbeddingNet`` key of an arcface_torch IR-ResNet key, or None (unknown)."""
    module, _, tensor = key.rpartition(".")
    if module in ("conv1", "bn1", "prelu"):
        return f"body.stem.{('conv1', 'bn1', 'prelu').index(module)}.{tensor}"
    if module == "bn2":
        return f"body.output.0.{tensor}"
    if module == "fc":
        return "neck.2.weight" if tensor == "weight" else None  # the bias is folded, not mapped
    if module == "features":
        return f"neck.3.{tensor}"
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(\w+)(?:\.([01]))?", module)
    if m is None:
        return None
    stage, block, part, sub = int(m[1]) - 1, m[2], m[3], m[4]
    prefix = f"body.stages.{stage}.{block}"
    if part == "downsample" and sub is not None:
        return f"{prefix}.shortcut.{sub}.{tensor}"
    if part in _RESIDUAL and sub is None:
        return f"{prefix}.residual.{_RESIDUAL.index(part)}.{tensor}"
    return None


def _expected(arch: str) -> dict[str, torch.Size]:
    """Key -> shape of fvloss's ``EmbeddingNet(arch, 512, img_size=112)`` state dict.

    Built on the meta device: shapes without allocating (iresnet100 is 65M parameters). The
    neck's keys are written out here rather than taken from :class:`fvloss.model.EmbeddingNet`,
    which sits above this package: an IR-ResNet's output is already normalised, so the neck is
    Identity (no keys), Dropout (none), Linear without bias (``neck.2``), BatchNorm1d
    (``neck.3``); ``tests/test_insightface_weights.py`` checks them against EmbeddingNet.
    """
    with torch.device("meta"):
        body = build_body(arch, IMG_SIZE)
        bn = torch.nn.BatchNorm1d(EMB_DIM)
    shapes = {f"body.{k}": v.shape for k, v in body.state_dict().items()}
    shapes["neck.2.weight"] = torch.Size([EMB_DIM, body.out_features])
    shapes |= {f"neck.3.{k}": v.shape for k, v in bn.state_dict().items()}
    return shapes


def _check_arch(arch: str) -> None:
    if arch == "mobilefacenet":
        raise ValueError(f"cannot import into mobilefacenet: {_MBF_WHY}")
    if arch not in SUPPORTED or arch not in BODIES:
        raise ValueError(
            f"no arcface_torch layout for arch {arch!r}; supported: {', '.join(SUPPORTED)}"
        )


def _guess(state: Mapping[str, object]) -> str:
    """What the file seems to hold, for error messages: ``" (the file looks like ...)"``."""
    if any(k.startswith("layers.0.layers.") for k in state) or "conv_sep.layers.0.weight" in state:
        return f" (the file looks like arcface_torch's MobileFaceNet: {_MBF_WHY})"
    blocks = [0, 0, 0, 0]
    for k in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            blocks[int(m[1]) - 1] = max(blocks[int(m[1]) - 1], int(m[2]) + 1)
    for depth, layers in LAYERS.items():
        if tuple(blocks) == layers:
            return f" (the file looks like iresnet{depth}: {layers} blocks per stage)"
    if any(blocks):
        return f" (the file has {tuple(blocks)} blocks per stage)"
    return ""


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def insightface_state_dict(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """An arcface_torch IR-ResNet state dict as fvloss's ``EmbeddingNet(arch, 512, img_size=112)``
    state dict (keys ``body.*`` and ``neck.*``; ``FaceNet`` / ``model.pth`` put ``embedder.``
    before them), ``fc.bias`` folded into ``neck.3.running_mean``.

    Every key and shape is checked: an unknown or missing key, or a tensor of another shape,
    raises ``ValueError`` naming the key (and both shapes). Only ``num_batches_tracked`` may be
    absent (filled with 0): a counter that no eval-mode output reads. Floating tensors come
    back as float32 (an fp16 save included), on the CPU.
    """
    _check_arch(arch)
    expected = _expected(arch)
    hint = _guess(state)
    where = f"arcface_torch {arch} state dict"
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key == "fc.bias":  # folded below
            continue
        name = _fvloss_name(key)
        if name is None or name not in expected:
            unknown.append(key)
            continue
        if not isinstance(value, torch.Tensor) or value.shape != expected[name]:
            raise ValueError(
                f"{where}: {key!r} has shape {_shape(value)}, fvloss's {name!r} needs "
                f"{tuple(expected[name])}{hint}"
            )
        value = value.detach().to("cpu")
        out[name] = value.float() if value.is_floating_point() else value
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(
            f"{where}: unexpected key {unknown[0]!r}{more}, not part of arcface_torch's {arch}"
            f"{hint}"
        )
    missing = [_arcface_name(k) for k in expected if k not in out and not k.endswith(_BN_COUNTER)]
    if "fc.bias" not in state:
        missing.insert(0, "fc.bias")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{where}: missing key {missing[0]!r}{more}{hint}")
    bias = state["fc.bias"]
    if not isinstance(bias, torch.Tensor) or bias.shape != (EMB_DIM,):
        raise ValueError(
            f"{where}: 'fc.bias' has shape {_shape(bias)}, the BatchNorm1d it folds into "
            f"('features', fvloss's 'neck.3') needs ({EMB_DIM},){hint}"
        )
    # y = BN(Wx + b) = BN'(Wx) with BN'.running_mean = running_mean - b (module docstring);
    # subtracted in float64, so the fold rounds once, in the cast back to float32
    mean = out["neck.3.running_mean"].double() - bias.detach().to("cpu").double()
    out["neck.3.running_mean"] = mean.float()
    for k in expected:  # a save without the BN counters (no effect on an eval-mode output)
        out.setdefault(k, torch.tensor(0, dtype=torch.long))
    return {k: out[k] for k in expected}  # fvloss's registration order


def _arcface_name(name: str) -> str:
    """The arcface_torch key of an fvloss ``EmbeddingNet`` key (the inverse of the map)."""
    module, _, tensor = name.rpartition(".")
    parts = module.split(".")
    if parts[:2] == ["body", "stem"]:
        return f"{('conv1', 'bn1', 'prelu')[int(parts[2])]}.{tensor}"
    if parts[:2] == ["body", "output"]:
        return f"bn2.{tensor}"
    if module == "neck.2":
        return f"fc.{tensor}"
    if module == "neck.3":
        return f"features.{tensor}"
    stage, block, part, sub = int(parts[2]) + 1, parts[3], parts[4], int(parts[5])
    if part == "shortcut":
        return f"layer{stage}.{block}.downsample.{sub}.{tensor}"
    return f"layer{stage}.{block}.{_RESIDUAL[sub]}.{tensor}"


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's flat state dict from what ``torch.load`` returned: a state dict, or a
    checkpoint nesting one (arcface_torch's ``state_dict_backbone``), keys maybe prefixed by
    DDP's ``module.``."""
    for _ in range(3):  # a wrapper of a wrapper at most
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in _NESTED if isinstance(obj.get(k), Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: not a state dict (a {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{path}: not a state dict: {bad[0]!r} holds a {type(obj[bad[0]]).__name__}, not a "
            f"tensor (a checkpoint? its backbone is looked for under {', '.join(_NESTED)})"
        )
    state = dict(obj)
    while state and all(k.startswith("module.") for k in state):  # DDP's (or DataParallel's)
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_insightface(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """Read an arcface_torch backbone file (``torch.load`` with ``weights_only=True``) and map
    it with :func:`insightface_state_dict`: fvloss's ``EmbeddingNet(arch, 512, img_size=112)``
    state dict. ``FileNotFoundError`` when there is no file; ``ValueError`` naming the file
    when it is not a readable weights file (a pickle carrying code included) or does not fit.
    """
    path = Path(path)
    _check_arch(arch)  # before reading what may be hundreds of MB
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle carrying code: refused
        text = str(e).strip()
        first = text.splitlines()[0][:200] if text else ""
        raise ValueError(
            f"{path}: not a readable weights file ({type(e).__name__}: {first})"
        ) from None
    try:
        return insightface_state_dict(_unwrap(obj, path), arch)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
