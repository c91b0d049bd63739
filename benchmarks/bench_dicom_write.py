"""Benchmark: write a BINARY DICOM-SEG and a Parametric Map for a 300-slice 512x512 CT series.

Not a test. Builds a synthetic CT series (from pydicom's CT_small.dcm header) in a temporary
folder, loads it with LoadDicomd, then times each writer and records its peak Python heap
(tracemalloc, which sees numpy buffers) and the process's peak RSS.

    python benchmarks/bench_dicom_write.py [--slices 300] [--size 512]
"""

from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import torch
from monai.data import MetaTensor
from pydicom.uid import generate_uid

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


def measure(name: str, fn) -> None:
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:32s} {seconds:7.2f} s   peak heap {peak / 2**20:8.1f} MiB   process peak RSS so far {rss:8.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ct").mkdir()
        t = time.perf_counter()
        make_series(tmp / "ct", args.slices, args.size)
        print(f"made {args.slices} x {args.size}x{args.size} series in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        d = LoadDicomd("image")({"image": str(tmp / "ct")})
        print(f"LoadDicomd                       {time.perf_counter() - t:7.2f} s")
        image = d["image"]
        shape = image.shape[1:]
        grid = np.indices(shape, sparse=True)
        centre = [s / 2 for s in shape]
        r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        mask = (r2 < (shape[0] / 4) ** 2).astype(np.float32)  # a ball through ~half the slices
        heat = np.exp(-r2 / (2 * (shape[0] / 6) ** 2)).astype(np.float32)
        del r2

        def exp(values, kind):
            return Explanation(map=MetaTensor(torch.from_numpy(values)[None, None], affine=image.affine), kind=kind,
                               method="medcam", target=torch.tensor([[1]]))

        measure("BINARY SEG (write_dicom_seg)", lambda: write_dicom_seg(exp(mask, "mask"), d["source_image"], tmp / "seg.dcm"))
        measure("Parametric Map (float32)", lambda: write_parametric_map(exp(heat, "heatmap"), d["source_image"], tmp / "pm.dcm"))
        for f in ("seg.dcm", "pm.dcm"):
            print(f"{f}: {(tmp / f).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
