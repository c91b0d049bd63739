"""Benchmark: write a BINARY DICOM-SEG and a Parametric Map for a 300-slice 512x512 CT series.

Not a test. Builds a synthetic CT series (from pydicom's CT_small.dcm header) in a temporary
folder, loads it with LoadDicomd, makes a mask and a heatmap on the source grid, then runs each
writer in a forked child process, so that each figure is that writer's alone:

- wall and CPU seconds of the writer call (CPU time is the steadier figure on a shared machine);
- peak RSS above the loaded state: the child's peak resident memory minus the parent's RSS at the
  fork (volume, reference, mask and heatmap loaded), i.e. what the writer adds.

    python benchmarks/bench_dicom_write.py [--slices 300] [--size 512] [--stock]

``--stock`` also writes from the volume as MONAI's stock ``LoadImaged`` (ITKReader) leaves it,
whose series headers the writers read from the files named in its meta.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import torch
from monai.data import MetaTensor
from pydicom.uid import generate_uid

import medcam_monai.io.dicom_seg  # noqa: F401  imported before forking: the children time writing, not imports
import medcam_monai.io.parametric_map  # noqa: F401
from medcam_monai.explanation import Explanation
from medcam_monai.io import LoadDicomd, write_dicom_seg, write_parametric_map


def make_series(folder: Path, slices: int, size: int) -> None:
    template = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    series, frame = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(slices):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame
        ds.InstanceNumber = slices - k
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [-180.0, -180.0, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelData = rng.integers(0, 2000, (size, size), dtype=np.int16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(fn, queue) -> None:
    warnings.simplefilter("ignore")
    base = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: the loaded state inherited from the parent
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    queue.put((time.perf_counter() - wall, time.process_time() - cpu, base, status_mib("VmHWM")))


def measure(name: str, fn) -> None:
    """Run ``fn`` in a forked child; print its wall/CPU time and its peak RSS above the loaded state."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, queue))
    p.start()
    wall, cpu, base, peak = queue.get()
    p.join()
    print(f"{name:38s} {wall:7.2f} s wall {cpu:7.2f} s CPU   peak RSS above loaded {(peak - base) / 1024:5.2f} GiB"
          f"   (loaded {base / 1024:4.2f} GiB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--stock", action="store_true", help="also write from LoadImaged(ITKReader) output")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ct").mkdir()
        t = time.perf_counter()
        make_series(tmp / "ct", args.slices, args.size)
        print(f"made {args.slices} x {args.size}x{args.size} series in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        d = LoadDicomd("image")({"image": str(tmp / "ct")})
        print(f"{'LoadDicomd':38s} {time.perf_counter() - t:7.2f} s wall", flush=True)
        image = d["image"]
        shape = image.shape[1:]
        grid = np.indices(shape, sparse=True)
        centre = [s / 2 for s in shape]
        r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        mask = (r2 < (shape[0] / 4) ** 2).astype(np.float32)  # a ball through ~half the slices
        heat = np.exp(-r2 / (2 * (shape[0] / 6) ** 2)).astype(np.float32)
        del r2

        def exp(values, kind, affine):
            return Explanation(map=MetaTensor(torch.from_numpy(values)[None, None], affine=affine), kind=kind,
                               method="medcam", target=torch.tensor([[1]]))

        sources = [("LoadDicomd", d["source_image"], image.affine)]
        if args.stock:
            from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

            stock = Compose([LoadImaged("image", reader="ITKReader"), EnsureChannelFirstd("image")])({"image": str(tmp / "ct")})["image"]
            # its meta (affine, file names) is all the writers need: keep that, drop its pixels
            sources.append(("LoadImaged(ITKReader)", MetaTensor(torch.zeros(1), meta=dict(stock.meta)), stock.affine))
            del stock
        # highdicom loads its tables of the standard (~2 s, once per process) on its first object:
        # one small write (2 slices) before forking keeps that out of every writer's figures
        (tmp / "warm").mkdir()
        for f in sorted((tmp / "ct").iterdir())[:2]:
            os.link(f, tmp / "warm" / f.name)
        warm = LoadDicomd("image")({"image": str(tmp / "warm")})
        write_dicom_seg(exp(np.ascontiguousarray(mask[:, :, :2]), "mask", warm["image"].affine), warm["source_image"], tmp / "warm.dcm")
        del warm
        for label, source, affine in sources:
            measure(f"BINARY SEG [{label}]", lambda: write_dicom_seg(exp(mask, "mask", affine), source, tmp / "seg.dcm"))
            measure(f"Parametric Map [{label}]", lambda: write_parametric_map(exp(heat, "heatmap", affine), source, tmp / "pm.dcm"))
        for f in ("seg.dcm", "pm.dcm"):
            print(f"{f}: {(tmp / f).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
