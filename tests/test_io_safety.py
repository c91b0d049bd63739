"""Issue 14 findings in io, each named after the finding: no one's data mixed, nothing half-written,
outputs readable by other users, input scans that skip hidden files and leftovers of killed runs."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _io_support import CT5N, copy_series, dciodvfy_errors, explanation_on
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

import medcam_monai.io as mio
from medcam_monai.errors import InputError
from medcam_monai.io import LoadDicomd, LoadImageSourced, input_cases, input_kind, read_dicom, write_dicom_seg, write_nifti, write_parametric_map


def _edit(folder, index, **attributes):
    """Change (None: delete) attributes of the ``index``-th file of a series folder (sorted by name)."""
    files = sorted(folder.iterdir()) if index is None else [sorted(folder.iterdir())[index]]
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in attributes.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
        ds.save_as(f)
    return files


def _mask(image, ref):
    m = np.zeros(ref.spatial_shape, np.float32)
    m[4:10, 5:9, 1:4] = 1
    return explanation_on(image, m[None], "mask")


@pytest.mark.parametrize("attribute", ["PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"])
def test_slices_of_different_patients_are_refused(tmp_path, attribute):
    """#2: one slice carrying another patient, study or frame of reference is never one volume,
    whether the folder is read by LoadDicomd or by stock LoadImaged (headers read by the writer)."""
    folder = copy_series(CT5N, tmp_path)
    other = "1.2.3.4.5" if attribute.endswith("UID") else "OTHER^PATIENT"
    (stray,) = _edit(folder, 2, **{attribute: other})
    with pytest.raises(mio.MixedIdentityError) as e:
        read_dicom(folder)
    msg = str(e.value)
    assert attribute in msg and stray.name in msg and other in msg
    stock = Compose([LoadImaged("image", reader="ITKReader"), EnsureChannelFirstd("image")])({"image": str(folder)})["image"]
    out = tmp_path / "out" / "seg.dcm"
    with pytest.raises(mio.MixedIdentityError, match=attribute):
        write_dicom_seg(explanation_on(stock, np.ones((1, 16, 16, 5)), "mask"), stock, out)
    assert not out.parent.exists()  # nothing written, not even the folder


def test_a_stray_slice_of_another_series_is_named(tmp_path):
    """#2, series: the folder is refused as several series, and the listing names the stray file."""
    folder = copy_series(CT5N, tmp_path)
    (stray,) = _edit(folder, 1, SeriesInstanceUID="1.2.3.4.5.6")
    with pytest.raises(mio.MultipleSeriesError) as e:
        read_dicom(folder)
    assert "1.2.3.4.5.6" in str(e.value) and stray.name in str(e.value)


def test_source_without_patient_id_says_what_the_output_carries(tmp_path):
    """#2: a source without PatientID gave a raw highdicom AttributeError and an empty folder; now
    the SEG/PM carry an empty PatientID (type 2), with a warning saying so."""
    folder = copy_series(CT5N, tmp_path)
    _edit(folder, None, PatientID=None, PatientBirthDate=None)
    d = LoadDicomd("image")({"image": str(folder)})
    ref = mio.as_source_reference(d["source_image"])
    for writer, name in ((write_dicom_seg, "seg.dcm"), (write_parametric_map, "pm.dcm")):
        with pytest.warns(UserWarning, match="no PatientID, PatientBirthDate.*empty"):
            out = writer(_mask(d["image"], ref), d["source_image"], tmp_path / "out" / name)
        ds = pydicom.dcmread(out)
        assert ds.PatientID == "" and ds.PatientName == pydicom.dcmread(next(folder.iterdir())).PatientName
        assert dciodvfy_errors(out) == []


def test_source_without_study_uid_is_refused_before_writing(tmp_path):
    folder = copy_series(CT5N, tmp_path)
    _edit(folder, None, StudyInstanceUID=None)
    d = LoadDicomd("image")({"image": str(folder)})
    out = tmp_path / "out" / "seg.dcm"
    with pytest.raises(mio.MissingIdentityError, match="no StudyInstanceUID.*Fix the source"):
        write_dicom_seg(_mask(d["image"], mio.as_source_reference(d["source_image"])), d["source_image"], out)
    assert not out.parent.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    """#8: outputs were created 0600 (mkstemp) whatever the umask, while records were 0644."""
    d = LoadDicomd("image")({"image": str(CT5N)})
    ref = mio.as_source_reference(d["source_image"])
    old = os.umask(umask)
    try:
        outputs = [
            write_nifti(_mask(d["image"], ref), d["source_image"], tmp_path / "m.nii.gz"),
            write_dicom_seg(_mask(d["image"], ref), d["source_image"], tmp_path / "m.seg.dcm"),
        ]
        record = tmp_path / "record.json"
        record.write_text("{}")
    finally:
        os.umask(old)
    for out in outputs:
        assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(record.stat().st_mode) == 0o666 & ~umask


def test_input_scan_skips_hidden_files_and_leftovers_of_killed_runs(tmp_path):
    """#7: macOS ``._*`` files, hidden files and ``*.part*`` leftovers made the next run abort."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (folder / ".a.png.1f2e3d4c.part.png").write_bytes(b"half a png")  # atomic_path's temp name
    (folder / "b.png.part").write_bytes(b"half a png")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    kind, cases = input_cases(folder)
    assert kind == "2d" and [os.path.basename(c["image"]) for c in cases] == ["a.png"]
    # a DICOM series folder with such leftovers is still one series
    series = copy_series(CT5N, tmp_path)
    (series / "._CT2N").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (series / "CT9N.part").write_bytes(b"half a DICOM file")
    assert input_kind(series) == "dicom"
    _, ref = read_dicom(series)
    assert len(ref.files) == 5
    # nothing left: a folder of leftovers only holds no images
    empty = tmp_path / "leftovers"
    empty.mkdir()
    (empty / "._a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="No images"):
        input_cases(empty)


def test_a_failed_write_leaves_no_file_and_no_folder(tmp_path, monkeypatch):
    """Nothing half-written: the temporary file and the folders made for it are removed."""
    image = LoadImageSourced("image")({"image": _nifti(tmp_path)})["image"]
    final = tmp_path / "deep" / "er" / "m.nii.gz"

    def full_disk(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_nifti(explanation_on(image, np.ones((1, 4, 3, 2)), "mask"), image, final)
    assert not (tmp_path / "deep").exists()


def _nifti(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.eye(4)), path)
    return str(path)
