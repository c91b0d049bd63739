"""Real anatomy shipped inside wheels, and cases made from it (nothing is downloaded).

- :mod:`~medcam_monai.data.anatomy.template`: the MNI152 2009c T1 template and its grey/white-matter
  maps from nilearn's wheel, nibabel's example EPI, resampling onto any grid;
- :mod:`~medcam_monai.data.anatomy.tissue`: 3D grey/white-matter segmentation cases (the training
  volume, held-aside acquisitions, the ``mni152_tissue`` stand-in generator);
- :mod:`~medcam_monai.data.anatomy.lesions`: 2D slices with planted lesions whose evidence is known
  (the ``mni152_lesions`` stand-in generator);
- :mod:`~medcam_monai.data.anatomy.dicom_mr`: a volume written as a DICOM MR series with real geometry.

Submodules are imported on use.
"""
