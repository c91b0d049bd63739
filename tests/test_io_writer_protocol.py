"""The writer protocol (issue 10): what each writer accepts, the shared preparation, refusals before
any work, DICOM writers that read headers only and take the UIDs to use, geometry from headers."""

from __future__ import annotations

import inspect
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from _io_support import CT5N, dciodvfy_errors, explanation_on, gunzip_enhanced_mr
from monai.data import MetaTensor

import medcam_monai.io as mio
from medcam_monai.io import WRITER_SUFFIXES, WRITERS, LoadDicomd, Writer, as_source_reference, write_dicom_seg, write_nifti
from medcam_monai.io import write_parametric_map, write_png_overlay
from medcam_monai.io.writers import writer_table, writers_for


def _ct():
    d = LoadDicomd("image")({"image": str(CT5N)})
    return d["image"], d["source_image"], as_source_reference(d["source_image"])


def _mask(image, shape):
    m = np.zeros(shape, np.float32)
    m[3:9, 4:10, 1:4] = 1
    return explanation_on(image, m[None], "mask")


def test_each_writer_declares_what_it_accepts():
    assert list(WRITERS) == ["nifti", "dicom_seg", "parametric_map", "slicer_seg", "png", "wsi", "geojson"]
    assert WRITER_SUFFIXES == {name: w.suffix for name, w in WRITERS.items()}
    assert all(isinstance(w, Writer) and w.name == name for name, w in WRITERS.items())
    # each public write_* function is its writer, with the format's options in its signature
    assert WRITERS["nifti"] is mio.write_nifti and mio.write_nifti.__name__ == "write_nifti"
    assert list(inspect.signature(mio.write_nifti).parameters) == ["explanation", "source", "path", "case", "channel"]
    assert "series_instance_uid" in inspect.signature(mio.write_parametric_map).parameters
    assert writers_for("dicom", 3, "mask") == ["nifti", "dicom_seg", "parametric_map", "slicer_seg", "png"]
    assert writers_for("image", 3, "heatmap") == ["nifti", "slicer_seg", "png"]
    assert writers_for("image", 2, "heatmap") == ["nifti", "png", "geojson"]
    assert writers_for("wsi", 2, "mask") == ["nifti", "png", "wsi", "geojson"]
    assert not WRITERS["dicom_seg"].accepts("image", 3, "mask") and not WRITERS["slicer_seg"].accepts("dicom", 2, "mask")


def test_writer_table_and_classes_are_validated():
    nifti = WRITERS["nifti"]
    with pytest.raises(TypeError, match="Writer objects"):
        writer_table([nifti, lambda explanation, source, path: path])
    with pytest.raises(ValueError, match="Two writers are named 'nifti'"):
        writer_table([nifti, type(nifti)()])
    with pytest.raises(TypeError, match="must set 'suffix'"):
        type("NoSuffix", (Writer,), {"name": "x", "function": "write_x", "write": lambda self, case, path: None})
    with pytest.raises(TypeError, match="start with a dot"):
        type("BadSuffix", (Writer,), {"name": "x", "function": "write_x", "suffix": "x", "write": lambda self, case, path: None})
    with pytest.raises(TypeError, match="outside"):
        type("BadSource", (Writer,), {"name": "x", "function": "write_x", "suffix": ".x", "sources": ("video",),
                                      "write": lambda self, case, path: None})

    class Twin(type(nifti)):
        name = "nifti_copy"

        def write(self, case, path, **options):
            pass

    with pytest.raises(ValueError, match="share the suffix"):
        writer_table([nifti, Twin()])


def test_refusals_come_before_any_work(tmp_path, monkeypatch):
    """Wrong source, wrong ending, unknown option or bad value: refused before the map is brought to
    the source grid, and nothing is written."""
    image, source, ref = _ct()
    exp = _mask(image, ref.spatial_shape)

    def no_work(*args, **kwargs):
        raise AssertionError("prepare() ran before the refusal")

    monkeypatch.setattr(Writer, "prepare", no_work)
    with pytest.raises(TypeError, match="options are .*'channel'"):
        WRITERS["nifti"](exp, source, tmp_path / "a.nii.gz", colour=3)
    with pytest.raises(ValueError, match=r"ending \.nii or \.nii\.gz"):
        write_nifti(exp, source, tmp_path / "a.nrrd")
    with pytest.raises(ValueError, match="threshold must be in"):
        WRITERS["slicer_seg"](exp, source, tmp_path / "a.seg.nrrd", threshold=2)
    with pytest.raises(ValueError, match="channel 3 out of range"):
        write_png_overlay(exp, source, tmp_path / "a.png", channel=3)
    volume = mio.ImageReference(path="x.nii.gz", affine=ref.affine_array, spatial_shape=ref.spatial_shape, format="nifti")
    with pytest.raises(ValueError, match="needs a 2D source, got 3D"):
        WRITERS["geojson"](exp, volume, tmp_path / "a.geojson")
    png = mio.ImageReference(path="x.png", affine=np.eye(3), spatial_shape=(4, 4), format="2d")
    with pytest.raises(TypeError, match="needs a DICOM series"):
        write_dicom_seg(explanation_on(MetaTensor(torch.zeros(1, 4, 4)), np.zeros((1, 4, 4)), "mask"), png, tmp_path / "a.dcm")
    assert not list(tmp_path.iterdir())


def test_dicom_writers_take_the_uids_to_use(tmp_path):
    """#4: the pipeline passes the UIDs instead of re-stamping files afterwards."""
    image, source, ref = _ct()
    exp = _mask(image, ref.spatial_shape)
    uids = {"series_instance_uid": "1.2.826.0.1.3680043.8.498.1", "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2"}
    seg = pydicom.dcmread(write_dicom_seg(exp, source, tmp_path / "seg.dcm", series_number=7, **uids))
    pm = pydicom.dcmread(write_parametric_map(exp, source, tmp_path / "pm.dcm", series_number=8,
                                              series_instance_uid="1.2.826.0.1.3680043.8.498.3", sop_instance_uid="1.2.826.0.1.3680043.8.498.4"))
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID, seg.SeriesNumber) == (*uids.values(), 7)
    assert seg.file_meta.MediaStorageSOPInstanceUID == uids["sop_instance_uid"]
    assert (pm.SeriesInstanceUID, pm.SOPInstanceUID, pm.SeriesNumber) == ("1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.4", 8)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    bad = {
        "1.2.04.5": "leading zero",
        "1.2.abc": "letters",
        "1." + "2" * 63: "65 characters",
        "../../etc": "a path",
        ref.series_instance_uid: "the source's series",
        ref.sop_instance_uids[0]: "a source instance",
    }
    for uid, why in bad.items():
        with pytest.raises(ValueError, match="series_instance_uid|source series") as e:
            write_dicom_seg(exp, source, tmp_path / "bad" / "seg.dcm", series_instance_uid=uid)
        assert uid in str(e.value), why
    with pytest.raises(ValueError, match="sop_instance_uid"):
        write_parametric_map(exp, source, tmp_path / "bad" / "pm.dcm", sop_instance_uid="1.2.3.")
    with pytest.raises(ValueError, match="must differ"):
        write_dicom_seg(exp, source, tmp_path / "bad" / "seg.dcm", series_instance_uid="1.2.3", sop_instance_uid="1.2.3")
    with pytest.raises(ValueError, match="series_number"):
        write_dicom_seg(exp, source, tmp_path / "bad" / "seg.dcm", series_number=-1)
    assert not (tmp_path / "bad").exists()


def test_dicom_writers_read_headers_only(tmp_path, monkeypatch):
    """#3: the writers re-read every source file with its pixels (highdicom.get_volume_from_series);
    now each source header is read once per writer call, without pixel data."""
    image, source, ref = _ct()
    exp = _mask(image, ref.spatial_shape)
    reads = []
    real = pydicom.dcmread

    def recording(path, *args, **kwargs):
        reads.append((Path(path).name, bool(kwargs.get("stop_before_pixels"))))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", recording)
    for writer, stock in ((write_dicom_seg, False), (write_parametric_map, False), (write_dicom_seg, True)):
        reads.clear()
        src = MetaTensor(torch.zeros(1), meta={k: image.meta[k] for k in ("filename_or_obj", "spatial_shape", "original_affine")}) if stock else source
        writer(exp, src, tmp_path / f"{writer.__name__}_{stock}.dcm")
        assert reads and all(headers_only for _, headers_only in reads), reads
        assert sorted(name for name, _ in reads) == sorted(Path(f).name for f in ref.files)  # each file once


def test_header_geometry_equals_highdicom_volume_from_pixels(tmp_path):
    """#3: the geometry the writers compute from headers is highdicom's own, as get_volume_from_series
    (single-frame series) and Image.get_volume (Enhanced multi-frame) give it from the pixels."""
    from medcam_monai.io._dicom_common import source_geometry
    from medcam_monai.io.dicom_series import load_source_headers

    _, _, ref = _ct()
    geometry = source_geometry(ref, load_source_headers(ref))
    volume = hd.get_volume_from_series([pydicom.dcmread(f) for f in ref.files])
    assert geometry.spatial_shape == volume.spatial_shape
    np.testing.assert_allclose(geometry.affine, volume.affine, atol=1e-6)
    path = gunzip_enhanced_mr(tmp_path)
    ref = as_source_reference(LoadDicomd("image")({"image": str(path)})["source_image"])
    geometry = source_geometry(ref, load_source_headers(ref))
    volume = hd.Image.from_dataset(pydicom.dcmread(path), copy=False).get_volume()
    assert geometry.spatial_shape == volume.spatial_shape == (176, 256, 256)
    np.testing.assert_allclose(geometry.affine, volume.affine, atol=1e-6)


def test_png_writer_reads_the_source_at_most_once(tmp_path, monkeypatch):
    """#3: the PNG writer does not load the series when the caller has the pixels, and otherwise
    reads each file once (pixels included), not a header pass and a pixel pass."""
    image, source, ref = _ct()
    heat = explanation_on(image, np.random.default_rng(0).random((1, *ref.spatial_shape)), "heatmap")
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k))
    given = write_png_overlay(heat, source, tmp_path / "given.png", image=image)
    assert reads == []
    loaded = write_png_overlay(heat, source, tmp_path / "loaded.png")
    assert sorted(reads) == sorted(Path(f).name for f in ref.files)
    assert Path(given).read_bytes() == Path(loaded).read_bytes()  # the same picture either way
