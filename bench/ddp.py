"""Several processes on one machine: training throughput of 2 gloo ranks against 1 process, and
what the collectives cost.

    python bench/ddp.py [--quick] [--arch resnet18] [--size 64] [--bs 64] [--steps 8]
                        [--classes 5296 100000] [--save]

One global batch of ``--bs`` images, trained three ways on the same cores: one process (all
threads), 2 gloo processes of ``bs/2`` each under DistributedDataParallel (one thread each), and
2 gloo processes with the ArcFace head as Partial FC (each rank holds half the classes, the
embeddings all-gathered, the softmax normaliser all-reduced). The step is the recipes' (body +
128-d neck + ArcFace head, fp32, fastai Adam) on batches in memory, the median of ``--steps``
steps after 2 of warm-up. Rows also give the collectives alone, timed on the 2 ranks: DDP's
gradient all-reduce (a buffer of the model's size) and Partial FC's all-gather of the
embeddings. On 2 cores this measures correctness costs, not a speed-up: the two ranks share the
cores one process already used.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table, quiet_warnings  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(arch: str, size: int, bs: int, steps: int, classes: int, partial_fc: bool) -> dict:
    """One rank's steps (RANK / WORLD_SIZE from the environment, as torchrun sets them)."""
    quiet_warnings()
    import torch
    import torch.distributed as dist
    from fastai.optimizer import Adam
    from torch.nn.parallel import DistributedDataParallel as DDP

    from fvloss.heads import ArcFaceHead
    from fvloss.heads.partial_fc import PartialFCHead, sharded_parameters
    from fvloss.model import EmbeddingNet, FaceNet

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    emb = EmbeddingNet(arch, 128, img_size=size)
    head = (
        PartialFCHead(ArcFaceHead, 128, classes, 1.0, s=64.0, m=0.5)
        if partial_fc
        else ArcFaceHead(128, classes, s=64.0, m=0.5)
    )
    model = FaceNet(emb, head).to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        own = [n for n, _, _ in sharded_parameters(model)]
        if own:
            DDP._set_params_and_buffers_to_ignore_for_model(model, own)
        net = DDP(model)
    opt = Adam(list(model.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(bs, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (bs,), generator=g)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss = model.head(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    out = {"step_s": statistics.median(times[2:])}
    if world > 1:  # the collectives alone
        n_params = sum(p.numel() for p in model.embedder.parameters())
        buf, e = torch.zeros(n_params), torch.randn(bs, 128)
        parts = [torch.empty_like(e) for _ in range(world)]
        for name, fn in (("all_reduce_s", lambda: dist.all_reduce(buf)),
                         ("all_gather_s", lambda: dist.all_gather(parts, e))):  # fmt: skip
            ts = []
            for _ in range(steps + 2):
                dist.barrier()
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            out[name] = statistics.median(ts[2:])
        out["grad_mib"] = n_params * 4 / 2**20
        dist.destroy_process_group()
    return out


def run(world: int, args, classes: int, partial_fc: bool) -> list[dict]:
    threads = max(1, (os.cpu_count() or 1) // world)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()), "WORLD_SIZE": str(world)}  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", args.arch, str(args.size),
           str(args.bs // world), str(args.steps), str(classes), str(int(partial_fc))]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(world)
    ]
    outs = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"rank failed: {(se.strip().splitlines() or ['?'])[-1]}")
        outs.append(json.loads(so.strip().splitlines()[-1]))
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 steps, 5,296 classes only")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bs", type=int, default=64, help="the global batch")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--classes", type=int, nargs="+", default=[5296, 100_000])
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        arch, size, bs, steps, classes, pfc = args.child
        r = child(arch, int(size), int(bs), int(steps), int(classes), pfc == "1")
        print(json.dumps(r))
        return 0
    if args.quick:
        args.steps, args.classes = 3, [5296]
    t_start = time.time()
    out = ["## Several processes: 2 gloo ranks vs 1 process (`bench/ddp.py`)", "",
           machine_header(f"{args.arch} {args.size} px, global batch {args.bs}, ArcFace, fp32, "
                          f"median of {args.steps} steps"), ""]  # fmt: skip
    print("\n".join(out), flush=True)
    rows = []
    for classes in args.classes:
        (one,) = run(1, args, classes, False)
        base = args.bs / one["step_s"]
        rows.append(
            [f"{classes:,}", "1 process", f"{one['step_s']:.3f}", f"{base:.1f}", "1.00", "", ""]
        )
        for label, pfc in (("2 gloo ranks, DDP", False), ("2 gloo ranks, DDP + Partial FC", True)):
            ranks = run(2, args, classes, pfc)
            step = max(r["step_s"] for r in ranks)  # the step waits for the slower rank
            ips = args.bs / step
            rows.append([f"{classes:,}", label, f"{step:.3f}", f"{ips:.1f}", f"{ips / base:.2f}",
                         f"{1000 * ranks[0]['all_reduce_s']:.1f} ({ranks[0]['grad_mib']:.0f} MiB)",
                         f"{1000 * ranks[0]['all_gather_s']:.2f}" if pfc else ""])  # fmt: skip
            print(f"  {classes} {label}: {ips:.1f} img/s ({ips / base:.2f}x)", flush=True)
    tab = md_table(["classes", "run", "step s", "images/s", "vs 1 process",
                    "grad all-reduce ms", "embedding all-gather ms"], rows)  # fmt: skip
    emit(out, "", tab, "")
    finish(out, t_start, args.save, "ddp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
