"""Any ``timm`` model as a body: ``arch="timm:NAME"`` (the optional ``fvloss[timm]`` extra).

Wightman, "PyTorch Image Models", https://github.com/huggingface/pytorch-image-models.

``num_classes=0`` makes timm drop its classifier and return the pooled features, whose width
it reports as ``num_features``. Note that ``pretrained=True`` makes timm download the weights
from the Hugging Face Hub on first use (cached afterwards); fvloss itself ships none.
"""

from __future__ import annotations

from torch import nn

__all__ = ["timm_body"]


def timm_body(name: str, pretrained: bool = False, img_size: int | None = None) -> nn.Module:
    """``timm.create_model(name, num_classes=0)`` with ``out_features = num_features``; models
    built for a fixed input size (ViTs) are built for ``img_size``."""
    try:
        import timm
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError(
            f"arch 'timm:{name}' needs the timm package: pip install fvloss[timm]"
        ) from e
    # timm's own error for a misspelt name is a RuntimeError deep in its factory; check first
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10]
        hint = f"; similar: {close}" if close else ""
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models()){hint}")
    try:  # models with a fixed input size take img_size; the others reject the keyword
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size)
    except TypeError:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0)
    net.out_features = int(net.num_features)
    return net
