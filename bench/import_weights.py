"""arcface_torch's own networks, imported by ``fvloss import-weights``, embed the same.

    python bench/import_weights.py SNAPSHOT_DIR [--archs iresnet18 iresnet50] [--batch 8]
                                   [--seed 0] [--save]

SNAPSHOT_DIR is a git snapshot of insightface (a bare mirror or a clone). The script extracts
``recognition/arcface_torch/backbones`` from its HEAD into a temporary folder and imports it
from there at run time (no insightface code is copied into fvloss), builds arcface_torch's own
``iresnet18`` / ``iresnet50`` (``get_model("r18")`` ...) with random weights (convs, PReLU
slopes, every BatchNorm's affine and running statistics, the FC's weight and bias), saves the
state dict as arcface_torch saves its releases (``torch.save(backbone.state_dict())``), imports
it with ``fvloss import-weights insightface:FILE --arch ARCH --out RUN`` and loads RUN with
``fvloss.runs.load_run``. Both networks then embed one batch of random 112x112 RGB images
normalised as arcface_torch does (``(x / 255 - 0.5) / 0.5``), in eval mode, and the table gives
the largest embedding difference (raw and L2-normalised), the same with the FC bias dropped
instead of folded (what the fold is worth), and the tensors mapped. arcface_torch's
MobileFaceNet (``mbf``) is tried too: fvloss refuses it (other shapes, see
``fvloss/bodies/insightface.py``), and the table says with which error.

``--save`` writes the report into ``bench/results/import_weights.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    ARCFACE_TORCH_NAMES,
    RESULTS,
    emit,
    end_line,
    machine_header,
    md_table,
    quiet_warnings,
    save_section,
    snapshot_files,
)

BACKBONES = "recognition/arcface_torch/backbones"
TITLE = "Released backbones imported into fvloss (`bench/import_weights.py`)"
NAMES = ARCFACE_TORCH_NAMES


def randomize(net, seed: int):
    """Every tensor a released model holds, drawn at random (a mapping that dropped or swapped
    one would show): convs and FC ~ N(0, 1/fan_in) (arcface_torch's own N(0, 0.1) makes a
    random 50-layer net's outputs reach 1e8), BatchNorm affine and running statistics, PReLU
    slopes, and an FC bias of up to +-2, large beside the embedding BatchNorm's scale. Each
    residual branch's last BatchNorm (``bn3``) scales by 0.05-0.2, as training leaves them
    small: with scales near 1 the residual sums of a random iresnet100 reach 1e5."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)

    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                if m.bias is not None:
                    u(m.bias, -2.0, 2.0)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                u(m.weight, *((0.05, 0.2) if name.endswith(".bn3") else (0.5, 1.5)))
                u(m.bias, -0.2, 0.2)
                u(m.running_mean, -0.2, 0.2)
                u(m.running_var, 0.5, 2.0)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))
            elif isinstance(m, nn.PReLU):
                u(m.weight, 0.0, 0.5)
    return net.eval()


def compare(arch: str, get_model, work: Path, args: argparse.Namespace) -> list[object]:
    """One table row: import arcface_torch's ``arch`` and embed one batch with both."""
    import torch

    from fvloss.cli.import_weights import main as import_weights
    from fvloss.model import EmbeddingNet
    from fvloss.runs import load_run

    ref = randomize(get_model(NAMES[arch], fp16=False, num_features=512), args.seed)
    state = ref.state_dict()
    path = work / f"{arch}.pth"
    torch.save(state, path)  # as arcface_torch saves model.pt
    run = work / f"run-{arch}"
    with contextlib.redirect_stdout(io.StringIO()):
        code = import_weights([f"insightface:{path}", "--arch", arch, "--out", str(run)])
    if code:
        raise SystemExit(f"fvloss import-weights failed on {arch} ({code})")
    ours = load_run(run, device="cpu").model
    mapped = torch.load(run / "model.pth", weights_only=True)
    g = torch.Generator().manual_seed(args.seed + 1)
    pixels = torch.randint(0, 256, (args.batch, 3, 112, 112), generator=g).float()
    x = (pixels / 255 - 0.5) / 0.5  # arcface_torch's inference.py / dataset.py
    # the bias dropped instead of folded: fvloss's net with arcface_torch's own running mean
    dropped = EmbeddingNet(arch, 512, img_size=112)
    dropped.load_state_dict({k.removeprefix("embedder."): v for k, v in mapped.items()})
    dropped.neck[3].running_mean.copy_(state["features.running_mean"])
    dropped.eval()
    with torch.no_grad():
        a, b, c = ref(x), ours(x), dropped(x)

    def l2(t):
        return t / t.norm(dim=1, keepdim=True)

    return [
        f"{arch} (`get_model('{NAMES[arch]}')`)",
        float((a - b).abs().max()),
        float(a.abs().max()),
        float((a - b).abs().max() / a.abs().max()),
        float((l2(a) - l2(b)).abs().max()),
        float((l2(a) - l2(c)).abs().max()),
        f"{len(state)} -> {len(mapped)}",
    ]


def mobilefacenet_row(get_model, work: Path) -> list[object]:
    """arcface_torch's MobileFaceNet, offered to fvloss's: refused, and why."""
    import torch

    from fvloss.bodies.insightface import load_insightface

    state = get_model("mbf", fp16=False, num_features=512).state_dict()
    path = work / "mbf.pth"
    torch.save(state, path)
    try:
        load_insightface(path, "mobilefacenet")
    except ValueError as e:
        why = str(e).split(": ", 1)[-1].split(" (see ")[0]
        return ["mbf -> mobilefacenet", "refused", "", "", "", "", f"{len(state)}: {why}"]
    return ["mbf -> mobilefacenet", "accepted (unexpected)", "", "", "", "", str(len(state))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("snapshot", type=Path, metavar="SNAPSHOT_DIR", help="insightface git snapshot")
    p.add_argument("--archs", nargs="+", default=["iresnet18", "iresnet50"], choices=list(NAMES))
    p.add_argument("--batch", type=int, default=8, help="random images embedded (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", action="store_true", help="write bench/results/import_weights.md")
    args = p.parse_args()
    quiet_warnings()
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*")  # their forward
    t_start = time.time()
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        commit = snapshot_files(args.snapshot, [BACKBONES], work / "insightface")
        sys.path.insert(0, str(work / "insightface" / "recognition" / "arcface_torch"))
        sys.dont_write_bytecode = True
        from backbones import get_model  # arcface_torch's, from the temporary copy

        emit(
            out,
            "## arcface_torch backbones imported by `fvloss import-weights` "
            "(`bench/import_weights.py`)",
            "",
            machine_header(f"insightface snapshot: {commit}, `{BACKBONES}`"),
            "",
            f"Each network embeds one batch of {args.batch} random 112x112 RGB images "
            "(`(x / 255 - 0.5) / 0.5`) in eval mode, fp32: arcface_torch's own module on its "
            "random state dict against fvloss's imported run folder (`load_run`).",
            "",
        )
        rows = [compare(arch, get_model, work, args) for arch in args.archs]
        rows.append(mobilefacenet_row(get_model, work))
    headers = [
        "arcface_torch network",
        "max abs emb diff",
        "max abs emb",
        "relative",
        "max diff, L2-normalised",
        "bias dropped, not folded: max diff, L2-normalised",
        "tensors: arcface_torch -> fvloss",
    ]
    emit(
        out,
        md_table(headers, rows),
        "",
        "The fvloss side has one tensor fewer: arcface_torch's `fc.bias`, folded into the "
        "embedding BatchNorm's running mean (`features` -> `neck.3`: mean - bias). The "
        "`bias dropped` column is what a mapping that ignored the bias would get wrong.",
        "",
        end_line(t_start),
    )
    if args.save:
        path = RESULTS / "import_weights.md"
        if not path.exists():  # a file of its own, not the per-CPU timings file
            path.write_text(f"# {TITLE}\n")
        print("saved to", save_section("\n".join(out), "import_weights", path))


if __name__ == "__main__":
    main()
