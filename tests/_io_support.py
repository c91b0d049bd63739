"""Shared helpers for the tests/test_io_*.py modules: real DICOM, checker tools, grid comparison."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import nibabel
import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medcam_monai.explanation import Explanation

CT5N = Path(pydicom.data.get_testdata_file("dicomdirtests/98892001/CT5N"))  # clean 5-slice CT
CT2_IRREGULAR = Path(pydicom.data.get_testdata_file("dicomdirtests/77654033/CT2"))
MR2_MIXED = Path(pydicom.data.get_testdata_file("dicomdirtests/98892003/MR2"))
CT_SLICE = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
MR_SLICE = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
ENHANCED_MR_GZ = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"


def gunzip_enhanced_mr(folder: Path) -> Path:
    out = folder / "philips_mprage.dcm"
    with gzip.open(ENHANCED_MR_GZ) as f, open(out, "wb") as g:
        shutil.copyfileobj(f, g)
    return out


def require_tool(name: str) -> str:
    """Path of a checker tool; fail in CI (env CI set) when missing, else skip with the reason."""
    found = shutil.which(name)
    if found:
        return found
    msg = f"{name} is not installed (dciodvfy: apt-get install dicom3tools; segimage2itkimage/paramap2itkimage: pip install dcmqi)"
    if os.environ.get("CI"):
        pytest.fail(msg + " -- CI must have it.")
    pytest.skip(msg)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors for ``path`` (empty list = valid)."""
    tool = require_tool("dciodvfy")
    r = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def dcmqi_read(path: Path, tool: str, out: Path) -> list[Path]:
    """Convert a SEG (segimage2itkimage) or Parametric Map (paramap2itkimage) to NRRD files."""
    exe = require_tool(tool)
    out.mkdir(parents=True, exist_ok=True)
    args = [exe, "--inputDICOM", str(path), "--outputDirectory", str(out)]
    if tool == "segimage2itkimage":
        args += ["--outputType", "nrrd", "--prefix", "seg"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{tool} failed on {path}:\n{r.stdout}\n{r.stderr}"
    return sorted(out.glob("*.nrrd"))


def itk_image_ras(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK image as ``(x, y, z)`` array and RAS affine, without highdicom."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    d = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = d, img.GetOrigin()
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def on_our_grid(their: np.ndarray, their_affine: np.ndarray, our_shape, our_affine: np.ndarray) -> np.ndarray:
    """Place ``their`` voxels on our grid; the two grids must differ only by axis flips/permutations
    and whole-voxel shifts (no interpolation), which is asserted. Voxels they lack stay 0."""
    m = np.linalg.inv(our_affine) @ their_affine
    assert np.allclose(m, np.round(m), atol=1e-3), f"grids are not voxel-aligned:\n{m}"
    m = np.round(m).astype(int)
    idx = np.indices(their.shape).reshape(3, -1)
    ours_idx = m[:3, :3] @ idx + m[:3, 3:4]
    inside = np.all((ours_idx >= 0) & (ours_idx < np.asarray(our_shape)[:, None]), axis=0)
    out = np.zeros(our_shape, dtype=their.dtype)
    out[tuple(ours_idx[:, inside])] = their.reshape(-1)[inside]
    assert not np.any(their.reshape(-1)[~inside]), "the checker's image has non-zero voxels outside our grid"
    return out


def copy_series(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def frames_by_source(ds_out, ref, values):
    """Check every SEG/PM frame against the source slice it references (UID and position) and
    return the decoded frames placed on ``ref``'s grid, per segment (index 1 for a PM)."""
    src_pos = {uid: np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float) for f, uid in zip(ref.files, ref.sop_instance_uids)}
    pixels = ds_out.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = {}
    for i, item in enumerate(ds_out.PerFrameFunctionalGroupsSequence):
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        uid = src.ReferencedSOPInstanceUID
        k = ref.sop_instance_uids.index(uid)
        pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(pos, src_pos[uid], atol=1e-3)
        seg = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) if "SegmentIdentificationSequence" in item else 1
        grid = out.setdefault(seg, np.zeros(values.shape[1:], np.float32))
        grid[..., k] = pixels[i].T
    return out


def explanation_on(image: MetaTensor, values: np.ndarray, kind: str, method: str = "medcam", target=(1,)) -> Explanation:
    """An Explanation of one case whose ``(K, *spatial)`` map carries ``image``'s affine."""
    m = MetaTensor(torch.as_tensor(values, dtype=torch.float32)[None], affine=image.affine.clone())
    return Explanation(map=m, kind=kind, method=method, target=torch.tensor([list(target)]))
