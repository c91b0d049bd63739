"""Med-CAM speed and memory on CPU (or CUDA) at 224x224 for ResNet-18 and MobileNet-V2 (timm).

For each network: train it briefly on generated 224x224 marker images (so decisions mean
something; cached under --cache), then explain held-out images with

- ``plain``:   fp32, full-resolution U-Net, 300 steps, no early stopping (the paper's loop);
- ``fast``:    bf16 autocast, U-Net at 1/4 resolution, early stopping (the project's fast path);
- ``batched``: ``fast`` with K images explained together.

Each configuration runs in its own process so its peak memory is its own. Printed per row:
seconds per step, seconds per image (to convergence), images per second, steps, decision-keeping
rate (argmax on e and on the robustness image equals argmax on x), IoU with the true marker, peak
resident memory.

Usage::

    python benchmarks/bench_medcam.py                 # both networks, 4 images
    python benchmarks/bench_medcam.py --nets resnet18 --images 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch

NETS = {"resnet18": "resnet18", "mobilenet_v2": "mobilenetv2_100"}
SIZE = 224
CLASSES = 3  # two marker classes and "no marker"
TRAIN_CASES, EPOCHS = 256, 10  # ~160 optimiser steps: fewer left ResNet-18 at chance on held-out images


def phantoms(n: int, seed: int):
    from medcam_monai.data.phantoms import marker_phantoms

    # periods of 8-12 px survive the networks' stride-4 stems at 224x224
    return marker_phantoms(n, size=SIZE, num_classes=CLASSES, channels=3, absent_class=True, stripe_scale=4, seed=seed)


def trained_classifier(name: str, cache: Path, device: str):
    import timm

    model = timm.create_model(NETS[name], pretrained=False, num_classes=CLASSES)
    path = cache / f"{name}_{SIZE}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device).eval()
    torch.manual_seed(0)
    data = phantoms(TRAIN_CASES, seed=1)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        for idx in torch.randperm(len(data)).split(16):
            x, y = data.images[idx].to(device), data.labels[idx].to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  trained {name} epoch {epoch + 1}/{EPOCHS}, loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    test = phantoms(48, seed=3)
    with torch.no_grad():
        acc = (model(test.images.to(device)).argmax(1).cpu() == test.labels).float().mean()
    print(f"  {name}: held-out accuracy {acc:.2f}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def run_config(name: str, config: str, images: int, batch: int, cache: str, device: str, queue) -> None:
    from medcam_monai import EarlyStopping, MedCAM

    torch.manual_seed(0)
    model = trained_classifier(name, Path(cache), device)
    test = phantoms(64, seed=2)
    keep = (test.labels < CLASSES - 1).nonzero().flatten()[:images]  # cases with evidence
    x_all, truth_all = test.images[keep].to(device), test.evidence[keep].to(device)
    if config == "plain":
        kwargs = dict(steps=300, early_stopping=None, mask_scale=1.0, amp=None)
    else:
        kwargs = dict(steps=300, early_stopping=EarlyStopping(), mask_scale=0.25, amp="bf16")
    explainer = MedCAM(model, **kwargs)
    explainer(x_all[:1])  # warm-up (allocator, kernels), not timed
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows, start = [], time.perf_counter()
    for chunk in range(0, len(keep), batch):
        ex = explainer(x_all[chunk : chunk + batch])
        truth = truth_all[chunk : chunk + batch]
        inter = (ex.map * truth).flatten(1).sum(1)
        union = ((ex.map + truth) > 0).float().flatten(1).sum(1)
        for i in range(len(ex)):
            rows.append(
                {
                    "steps": int(ex.steps[i]),
                    "kept": bool(ex.scores["decision_kept"][i]),
                    "iou": float(inter[i] / union[i]),
                    "area": float(ex.scores["area_fraction"][i]),
                    "prob_x": float(ex.scores["prob_x"][i]),
                    "prob_e": float(ex.scores["prob_e"][i]),
                }
            )
        rows[-1]["call_seconds"] = ex.seconds
        rows[-1]["call_steps"] = int(ex.steps.max())
    seconds = time.perf_counter() - start
    steps_total = sum(r["call_steps"] for r in rows if "call_steps" in r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    queue.put(
        {
            "net": name,
            "config": config,
            "batch": batch,
            "images": len(rows),
            "s_per_step": seconds / steps_total,
            "s_per_image": seconds / len(rows),
            "images_per_s": len(rows) / seconds,
            "mean_steps": sum(r["steps"] for r in rows) / len(rows),
            "kept_rate": sum(r["kept"] for r in rows) / len(rows),
            "mean_iou": sum(r["iou"] for r in rows) / len(rows),
            "mean_area": sum(r["area"] for r in rows) / len(rows),
            "prob_x": sum(r["prob_x"] for r in rows) / len(rows),
            "prob_e": sum(r["prob_e"] for r in rows) / len(rows),
            "peak_gib": peak,
            "device": device,
            "threads": torch.get_num_threads(),
        }
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--configs", nargs="+", default=["plain", "fast", "batched"], choices=["plain", "fast", "batched"])
    parser.add_argument("--images", type=int, default=4, help="images explained per configuration")
    parser.add_argument("--batch", type=int, default=4, help="K for the batched configuration")
    parser.add_argument("--cache", default="outputs/bench_medcam", help="where trained classifier weights are kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    results = []
    for name in args.nets:
        # train once in a child so the timed children only load weights
        p = ctx.Process(target=trained_classifier, args=(name, Path(args.cache), args.device))
        p.start()
        p.join()
        for config in args.configs:
            batch = args.batch if config == "batched" else 1
            q = ctx.Queue()
            p = ctx.Process(target=run_config, args=(name, config, args.images, batch, args.cache, args.device, q))
            p.start()
            row = q.get()
            p.join()
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    header = "| net | config | K | s/step | s/image | images/s | mean steps | decisions kept | IoU | area | p(x) | p(e) | peak GiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        print(
            f"| {r['net']} | {r['config']} | {r['batch']} | {r['s_per_step']:.3f} | {r['s_per_image']:.1f} | "
            f"{r['images_per_s']:.3f} | {r['mean_steps']:.0f} | {r['kept_rate']:.0%} | {r['mean_iou']:.2f} | "
            f"{r['mean_area']:.3f} | {r['prob_x']:.2f} | {r['prob_e']:.2f} | {r['peak_gib']:.2f} |"
        )
    print(f"\ndevice: {results[0]['device']}, torch threads: {results[0]['threads']}, python {sys.version.split()[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
