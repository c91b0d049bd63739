"""Time and peak memory of Seg-HiRes-Grad CAM through a sliding window, against plain inference.

A 3D MONAI UNet (channels 16..256, 2 residual units, random weights) on a 192x192x160 volume with
``SlidingWindowInferer(roi_size=96^3, overlap=0.25, sw_batch_size=1)`` (18 windows). Each mode runs
in its own process, so the peak resident memory (``ru_maxrss``) is that mode's alone:

- ``plain``: the inferer under ``torch.no_grad()`` (what the bundle runs);
- ``cam``: ``SegHiResGradCAM`` of class 1 on its predicted voxels, window by window;
- ``naive``: one backward through the whole sliding-window graph (for reference; ``--naive``).

Run: ``python benchmarks/bench_seg_cam_3d.py [--size 192 192 160] [--roi 96] [--naive]``.
Figures are noisy on a shared machine: the script takes the best of ``--repeats`` runs and also
reports process CPU time, which other users' load disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _network():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).eval()


def run_mode(mode: str, size, roi: int, repeats: int) -> dict:
    import torch
    from monai.inferers import SlidingWindowInferer

    from medcam_monai.cam import SegHiResGradCAM

    net = _network()
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, overlap=0.25, sw_batch_size=1)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0))
    times, cpu_times = [], []
    info = {}
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        if mode == "plain":
            with torch.no_grad():
                inferer(x, net)
        elif mode == "cam":
            e = SegHiResGradCAM(net, inferer=inferer)(x, target=1)
            info = {"voxels_in_M": int(e.scores["pixels"][0, 0]), "windows": e.settings["sliding_window"]["windows"]}
        elif mode == "naive":
            from medcam_monai.hooks import frozen

            with frozen(net):
                xg = x.clone().requires_grad_(True)
                pred = inferer(xg, net)
                m = pred.argmax(1) == 1
                (grad,) = torch.autograd.grad((pred[:, 1] * m).sum(), xg)
        else:
            raise ValueError(mode)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    return {"mode": mode, "seconds": min(times), "cpu_seconds": min(cpu_times), "peak_rss_gb": peak_gb, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[192, 192, 160])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive", action="store_true", help="also time the whole-graph gradient")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.size, args.roi, args.repeats)))
        return
    results = {}
    for mode in ["plain", "cam"] + (["naive"] if args.naive else []):
        cmd = [sys.executable, __file__, "--mode", mode, "--roi", str(args.roi), "--repeats", str(args.repeats), "--size", *map(str, args.size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[mode]))
    plain, cam = results["plain"], results["cam"]
    print(
        f"Seg-HiRes-Grad CAM / plain inference: time {cam['seconds'] / plain['seconds']:.2f}x "
        f"(CPU time {cam['cpu_seconds'] / plain['cpu_seconds']:.2f}x) "
        f"(target <= 2.5x), peak memory {cam['peak_rss_gb'] / plain['peak_rss_gb']:.2f}x (target <= 1.3x)"
    )


if __name__ == "__main__":
    main()
