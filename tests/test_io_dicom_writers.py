"""DICOM-SEG and Parametric Map: placed on the source slices, valid for dciodvfy, read back by dcmqi."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from _io_support import (
    CT2_IRREGULAR,
    CT5N,
    CT_SLICE,
    dciodvfy_errors,
    dcmqi_read,
    explanation_on,
    frames_by_source,
    gunzip_enhanced_mr,
    itk_image_ras,
    on_our_grid,
)
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Orientationd, Spacingd
from pydicom.sr.codedict import codes

from medcam_monai.explanation import Explanation
from medcam_monai.io import LoadDicomd, as_source_reference, write_dicom_seg, write_parametric_map
from medcam_monai.io.codes import property_type_for


def _load(path, **kw):
    d = LoadDicomd("image", **kw)({"image": str(path)})
    return d["image"], as_source_reference(d["source_image"])


def _blob(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.float32)
    x, y = shape[0] // 4, shape[1] // 3
    m[x : x + shape[0] // 3, y : y + shape[1] // 2, : max(1, shape[2] - 1)] = 1  # last slice empty
    heat = rng.random(shape).astype(np.float32) * 3 - 1
    return m, heat


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_binary_seg_on_clean_ct_series(tmp_path, seg_type):
    image, ref = _load(CT5N)
    mask, _ = _blob(ref.spatial_shape)
    second = np.zeros_like(mask)
    second[1:3, 1:3, 0:2] = 1
    values = np.stack([mask, second])
    exp = explanation_on(image, values, "mask", method="medcam", target=(1, 3))
    out = write_dicom_seg(exp, ref, tmp_path / "seg.dcm", segmentation_type=seg_type, labels={1: "tumour", 3: "benign"})
    errors = dciodvfy_errors(out)
    if seg_type == "LABELMAP":
        # Debian's dicom3tools (2022) predates Label Map Segmentation Storage (DICOM 2024): it does
        # not know the IOD and reads its background segment 0 as a BINARY numbering error.
        # Anything else is a real error. dcmqi below reads the object.
        known = {"Error - Information Object Not found",
                 "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence item number 1 (from one) with SegmentNumber of 0"}
        errors = [e for e in errors if e not in known]
    assert errors == []
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == seg_type
    src = pydicom.dcmread(ref.files[0])
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds[key].value == src[key].value
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID not in ref.sop_instance_uids
    segs = ds.SegmentSequence
    if seg_type == "LABELMAP":
        assert segs[0].SegmentNumber == 0
        segs = segs[1:]
    assert [s.SegmentLabel for s in segs] == ["medcam tumour", "medcam benign"]
    for s in segs:
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "309825002"
        assert (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("130404", "DCM")
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName.startswith("medcam-monai")
        assert "RecommendedDisplayCIELabValue" in s
    if seg_type == "BINARY":
        frames = frames_by_source(ds, ref, values)
        for k in range(2):
            np.testing.assert_array_equal(frames[k + 1], values[k])
    # independent reader: dcmqi (3D Slicer's converter)
    files = dcmqi_read(out, "segimage2itkimage", tmp_path / "dcmqi")
    got = np.zeros_like(values)
    for f in files:
        arr, aff = itk_image_ras(f)
        placed = on_our_grid(arr, aff, ref.spatial_shape, ref.affine_array)
        for label in np.unique(placed[placed > 0]):
            got[int(label) - 1] += placed == label
    np.testing.assert_array_equal(got > 0, values > 0)


def test_parametric_map_exact_and_read_by_dcmqi(tmp_path):
    image, ref = _load(CT5N)
    _, heat = _blob(ref.spatial_shape, seed=1)
    heat[0, 0, 0] = np.nan
    heat[1, 0, 0] = np.inf
    exp = explanation_on(image, heat[None], "heatmap", method="seg_hires_grad_cam", target=(2,))
    with pytest.warns(UserWarning, match="1 NaN and 1 Inf"):
        out = write_parametric_map(exp, ref, tmp_path / "pm.dcm")
    assert dciodvfy_errors(out) == []
    expected = np.nan_to_num(heat, nan=0.0, posinf=np.nanmax(heat[np.isfinite(heat)]))
    ds = pydicom.dcmread(out)
    assert ds.FloatPixelData and ds.BitsAllocated == 32
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130403"
    assert "FrameAnatomySequence" in ds.SharedFunctionalGroupsSequence[0]
    frames = frames_by_source(ds, ref, expected[None])
    np.testing.assert_array_equal(frames[1], expected)  # float32 exact
    (nrrd,) = dcmqi_read(out, "paramap2itkimage", tmp_path / "dcmqi")
    arr, aff = itk_image_ras(nrrd)
    np.testing.assert_array_equal(on_our_grid(arr, aff, ref.spatial_shape, ref.affine_array), expected)


def test_fractional_seg_sanitises_nan(tmp_path):
    image, ref = _load(CT5N)
    _, heat = _blob(ref.spatial_shape, seed=2)
    heat[2, 2, 2] = np.nan
    exp = explanation_on(image, heat[None], "heatmap", method="grad_cam")
    with pytest.warns(UserWarning, match="NaN"):
        out = write_dicom_seg(exp, ref, tmp_path / "frac.dcm")
    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "130403"
    clean = np.nan_to_num(heat)
    scaled = (clean - clean.min()) / (clean.max() - clean.min())
    frames = frames_by_source(ds, ref, heat[None])
    np.testing.assert_allclose(frames[1] / 255.0, scaled, atol=0.5 / 255 + 1e-6)


def test_seg_after_bundle_orientation_and_spacing_matches_invertd(tmp_path):
    """The map is made in the network's space (reoriented, resampled); both the writer's own
    resampling and Invertd put it back where it overlays the source slices."""
    pre = Compose([LoadDicomd("image"), Orientationd("image", axcodes="RAS", labels=None), Spacingd("image", pixdim=(0.4882815 / 2, 0.4882815 / 2, 1.25), mode="nearest")])
    d = pre({"image": str(CT5N)})
    ref = as_source_reference(d["source_image"])
    net = d["image"]
    assert net.shape[1:] != ref.spatial_shape  # preprocessing really changed the grid
    source_mask, _ = _blob(ref.spatial_shape)
    # the same mask, expressed on the network grid (evaluate at each network voxel's world position)
    world_to_src = np.linalg.inv(ref.affine_array)
    idx = np.indices(net.shape[1:]).reshape(3, -1)
    src_idx = np.round((world_to_src @ net.affine.numpy() @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]).astype(int)
    inside = np.all((src_idx >= 0) & (src_idx < np.asarray(ref.spatial_shape)[:, None]), axis=0)
    net_mask = np.zeros(idx.shape[1], np.float32)
    net_mask[inside] = source_mask[tuple(src_idx[:, inside])]
    net_mask = net_mask.reshape(net.shape[1:])
    exp = explanation_on(net, net_mask[None], "mask")
    out = write_dicom_seg(exp, d["source_image"], tmp_path / "seg.dcm")
    frames = frames_by_source(pydicom.dcmread(out), ref, source_mask[None])
    # Invertd, run on the explanation map with the bundle's own transforms
    d["pred"] = MetaTensor(torch.as_tensor(net_mask[None]), meta=dict(net.meta), applied_operations=list(net.applied_operations))
    inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(d)["pred"]
    np.testing.assert_array_equal(inv[0].numpy(), frames[1])
    np.testing.assert_array_equal(frames[1], source_mask)


def test_single_slice_and_irregular_series(tmp_path):
    image, ref = _load(CT_SLICE)
    mask = np.zeros(ref.spatial_shape, np.float32)
    mask[40:60, 70:90, 0] = 1
    out = write_dicom_seg(explanation_on(image, mask[None], "mask"), ref, tmp_path / "one.dcm")
    assert dciodvfy_errors(out) == []
    np.testing.assert_array_equal(frames_by_source(pydicom.dcmread(out), ref, mask[None])[1], mask)

    with pytest.warns(UserWarning, match="irregular"):
        image, ref = _load(CT2_IRREGULAR, allow_irregular_spacing=True)
    mask = np.zeros(ref.spatial_shape, np.float32)
    mask[3:9, 2:7, :] = 1
    mask[..., 2] = 0
    heat = np.random.default_rng(3).random(ref.spatial_shape).astype(np.float32)
    out = write_dicom_seg(explanation_on(image, mask[None], "mask"), ref, tmp_path / "irr.dcm")
    assert dciodvfy_errors(out) == []
    np.testing.assert_array_equal(frames_by_source(pydicom.dcmread(out), ref, mask[None])[1], mask)
    pm = write_parametric_map(explanation_on(image, heat[None], "heatmap"), ref, tmp_path / "irr_pm.dcm")
    assert dciodvfy_errors(pm) == []
    np.testing.assert_array_equal(frames_by_source(pydicom.dcmread(pm), ref, heat[None])[1], heat)


def test_enhanced_mr_source(tmp_path):
    path = gunzip_enhanced_mr(tmp_path)
    image, ref = _load(path)
    mask = np.zeros(ref.spatial_shape, np.float32)
    mask[100:140, 90:120, 80:84] = 1  # few non-empty frames keep the test fast
    out = write_dicom_seg(explanation_on(image, mask[None], "mask"), ref, tmp_path / "seg.dcm")
    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    pixels = ds.pixel_array
    assert ds.NumberOfFrames == 4
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref_item = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref_item.ReferencedSOPInstanceUID == src.SOPInstanceUID
        frame = int(ref_item.ReferencedFrameNumber)
        src_pos = src.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float), np.asarray(src_pos, float), atol=1e-3)
        k = ref.frame_numbers.index(frame)
        np.testing.assert_array_equal(pixels[i].T, mask[..., k])
    (nrrd,) = dcmqi_read(out, "segimage2itkimage", tmp_path / "dcmqi")
    arr, aff = itk_image_ras(nrrd)
    np.testing.assert_array_equal(on_our_grid(arr, aff, ref.spatial_shape, ref.affine_array) > 0, mask > 0)


def test_codes_and_bad_arguments(tmp_path):
    assert property_type_for("medcam") == codes.DCM.Saliency
    assert property_type_for("seg_hires_grad_cam") == codes.DCM.GradientWeightedClassActivation
    assert property_type_for("grad_cam") == codes.DCM.GradientWeightedClassActivation
    assert property_type_for("an_explainer_of_someone_else") == codes.DCM.Saliency
    image, ref = _load(CT5N)
    two = explanation_on(image, np.random.rand(2, *ref.spatial_shape), "heatmap", target=(0, 1))
    with pytest.raises(ValueError, match="Pass channel="):
        write_parametric_map(two, ref, tmp_path / "pm.dcm")
    overlap = explanation_on(image, np.ones((2, *ref.spatial_shape)), "mask", target=(0, 1))
    with pytest.raises(ValueError, match="overlap"):
        write_dicom_seg(overlap, ref, tmp_path / "lm.dcm", segmentation_type="LABELMAP")
    with pytest.raises(ValueError, match="segmentation_type"):
        write_dicom_seg(overlap, ref, tmp_path / "x.dcm", segmentation_type="SURFACE")
    plain = Explanation(map=torch.zeros(1, 1, 4, 4, 4), kind="mask", method="medcam", target=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="no affine"):
        write_dicom_seg(plain, ref, tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())  # nothing written by the failures
