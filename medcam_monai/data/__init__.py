"""The data the project runs on: manifests of the real datasets, generated stand-ins and phantoms.

- :mod:`~medcam_monai.data.manifests`: where each real dataset comes from, its layout, classes and
  splits, and whether a local copy matches (``data_manifests/*.json``); nothing is downloaded.
- :mod:`~medcam_monai.data.standins`: the cases a bundle reads: the real dataset when present, else
  stand-in files written once from the phantoms (public split seeds).
- :mod:`~medcam_monai.data.phantoms`: generated images whose true evidence is known, one module per
  modality.

Submodules are imported on use: ``import medcam_monai.data.manifests`` loads neither torch nor MONAI.
"""
