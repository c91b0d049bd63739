"""Loading DICOM: slice order, references, Enhanced multi-frame, and every bad input named."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from _io_support import CT2_IRREGULAR, CT5N, CT_SLICE, MR2_MIXED, gunzip_enhanced_mr
from monai.data import decollate_batch, list_data_collate
from monai.transforms import Compose, Orientationd

from medcam_monai.io import (
    DicomSeriesReference,
    IrregularSpacingError,
    LoadDicomd,
    MissingFrameOfReferenceError,
    MissingGeometryError,
    MultipleSeriesError,
    NotAnImageError,
    UnreadableImageError,
    as_source_reference,
    read_dicom,
)


def _copy(folder, tmp_path):
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def test_series_ordered_by_position_not_name_or_instance_number():
    array, ref = read_dicom(CT5N)
    headers = {f.name: pydicom.dcmread(f) for f in CT5N.iterdir()}
    by_name = sorted(headers)
    by_instance = sorted(headers, key=lambda n: int(headers[n].InstanceNumber))
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in ref.files]
    assert z == sorted(z)  # along the normal (0, 0, 1)
    ours = [p.split("/")[-1] for p in ref.files]
    assert ours != by_name and ours != by_instance  # both would give the reverse order here
    assert array.shape == (16, 16, 5) and ref.spatial_shape == (16, 16, 5)
    for k, f in enumerate(ref.files):
        ds = pydicom.dcmread(f)
        assert ref.sop_instance_uids[k] == ds.SOPInstanceUID
        np.testing.assert_allclose(array[..., k].T, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        # the affine maps voxel (0, 0, k) to that slice's ImagePositionPatient (LPS -> RAS)
        lps = np.asarray(ds.ImagePositionPatient, float)
        np.testing.assert_allclose(ref.affine_array @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
        # and voxel (1, 0, k) one column along the row direction
        step = np.asarray(ds.ImageOrientationPatient[:3], float) * float(ds.PixelSpacing[1])
        np.testing.assert_allclose(ref.affine_array @ [1, 0, k, 1] - ref.affine_array @ [0, 0, k, 1], [-step[0], -step[1], step[2], 0], atol=1e-4)


def test_load_dicomd_in_compose_reference_survives_collation_and_orientation():
    t = Compose([LoadDicomd("image"), Orientationd("image", axcodes="LPS", labels=None)])
    d = t({"image": str(CT5N)})
    assert d["image"].shape == (1, 16, 16, 5)
    ref = as_source_reference(d["source_image"])
    assert isinstance(ref, DicomSeriesReference) and len(ref.sop_instance_uids) == 5
    assert as_source_reference(d["image"]) == ref  # also in the MetaTensor's meta
    batch = list_data_collate([d, d])
    cases = decollate_batch(batch)
    assert as_source_reference(cases[1]["source_image"]) == ref
    assert as_source_reference(batch["source_image"][0]) == ref


def test_enhanced_multiframe(tmp_path):
    path = gunzip_enhanced_mr(tmp_path)
    array, ref = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert array.shape == (256, 256, 176) and ref.is_multiframe
    assert set(ref.sop_instance_uids) == {ds.SOPInstanceUID}
    assert sorted(ref.frame_numbers) == list(range(1, 177))
    frame0 = ds.PerFrameFunctionalGroupsSequence[0]
    normal = np.cross(*np.reshape(frame0.PlaneOrientationSequence[0].ImageOrientationPatient, (2, 3)).astype(float))
    pos = [np.asarray(ds.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient, float) for f in ref.frame_numbers]
    assert np.all(np.diff([p @ normal for p in pos]) > 0)
    k = 100
    f = ref.frame_numbers[k]
    pvt = ds.PerFrameFunctionalGroupsSequence[f - 1].PixelValueTransformationSequence[0]
    expected = ds.pixel_array[f - 1] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    np.testing.assert_allclose(array[..., k].T, expected, rtol=1e-5, atol=1e-3)
    lps = pos[k]
    np.testing.assert_allclose(ref.affine_array @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-3)


def test_single_slices():
    array, ref = read_dicom(CT_SLICE)
    assert array.shape == (128, 128, 1) and ref.files == (str(CT_SLICE),)
    assert ref.affine_array[2, 2] == pytest.approx(5.0)  # SliceThickness gives the slice axis length


def test_several_series_are_named_and_can_be_chosen():
    with pytest.raises(MultipleSeriesError) as e:
        read_dicom(MR2_MIXED)
    msg = str(e.value)
    assert "3 image series" in msg and "series_uid=" in msg
    for uid in ("1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481", "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.17"):
        assert uid in msg
    array, ref = read_dicom(MR2_MIXED, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481")
    assert array.shape[-1] == 1
    # a series of 3 localisers in different planes is no volume
    with pytest.raises(MissingGeometryError, match="different orientations"):
        read_dicom(MR2_MIXED, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.17")


def test_irregular_spacing_raises_unless_allowed():
    with pytest.raises(IrregularSpacingError, match="allow_irregular_spacing=True"):
        read_dicom(CT2_IRREGULAR)
    with pytest.warns(UserWarning, match="irregular"):
        array, ref = read_dicom(CT2_IRREGULAR, allow_irregular_spacing=True)
    assert array.shape[-1] == 4 and not ref.regular_spacing


def test_missing_image_position(tmp_path):
    folder = _copy(CT5N, tmp_path)
    f = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)
    with pytest.raises(MissingGeometryError, match=f"{f.name} lacks ImagePositionPatient"):
        read_dicom(folder)


def test_missing_frame_of_reference(tmp_path):
    folder = _copy(CT5N, tmp_path)
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    del ds.FrameOfReferenceUID
    ds.save_as(f)
    with pytest.raises(MissingFrameOfReferenceError, match=f.name):
        read_dicom(folder)


def test_truncated_file(tmp_path):
    folder = _copy(CT5N, tmp_path)
    f = sorted(folder.iterdir())[1]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 200])  # header intact, pixel data cut short
    with pytest.raises(UnreadableImageError, match=f.name):
        read_dicom(folder)
    f.write_bytes(data[:300])  # cut inside the header
    with pytest.raises(UnreadableImageError, match=f.name):
        read_dicom(folder)


def test_not_dicom_file_in_folder(tmp_path):
    folder = _copy(CT5N, tmp_path)
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="notes.txt is not a DICOM file"):
        read_dicom(folder)


def test_non_image_dicom(tmp_path):
    sr = pydicom.data.get_testdata_file("test-SR.dcm")
    with pytest.raises(NotAnImageError, match="not an image"):
        read_dicom(sr)
    folder = tmp_path / "sr_only"
    folder.mkdir()
    shutil.copy(sr, folder / "sr.dcm")
    with pytest.raises(NotAnImageError, match="no DICOM images"):
        read_dicom(folder)
    # beside an image series a non-image object is ignored, with a warning
    mixed = _copy(CT5N, tmp_path)
    shutil.copy(sr, mixed / "sr.dcm")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, ref = read_dicom(mixed)
    assert len(ref.files) == 5 and any("non-image" in str(x.message) for x in w)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        LoadDicomd("image")({"image": str(tmp_path / "nope")})
