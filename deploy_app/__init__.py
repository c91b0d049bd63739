"""Example MONAI Deploy app: a DICOM CT series in, a DICOM-SEG of its explanation out."""
