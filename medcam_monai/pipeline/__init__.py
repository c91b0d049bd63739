"""The pipeline step (PACS in, PACS out): explain studies with a bundle every night.

``medcam-monai pipeline BUNDLE STUDY... --pacs URL`` takes studies (DICOM folders, or Study
Instance UIDs on a DICOMweb server), selects the series the bundle accepts
(:mod:`~medcam_monai.pipeline.selection`), runs the bundle and its explainer
(:mod:`~medcam_monai.pipeline.bundle_run`), and stores the DICOM-SEG and Parametric Map in the
PACS by STOW-RS or C-STORE (:mod:`~medcam_monai.pipeline.pacs`), without duplicates
(:mod:`~medcam_monai.pipeline.identity`), with retries (:mod:`~medcam_monai.pipeline.retry`) and an
on-disk outbox (:mod:`~medcam_monai.pipeline.outbox`); one JSON line per study
(:mod:`~medcam_monai.pipeline.step`). Nothing read from a file or a PACS becomes a path unchecked, and
nothing outside the work folder is deleted (:mod:`~medcam_monai.pipeline.paths`).
"""

from medcam_monai.lazy import lazy_exports

# names are loaded on first use: `medcam-monai --help` should not pay for torch, MONAI and highdicom
_EXPORTS = {
    "SEG_TYPES": ".bundle_run",
    "BundleRunner": ".bundle_run",
    "BundleRunError": ".bundle_run",
    "parse_override": ".bundle_run",
    "PASSWORD_ENV": ".command",
    "add_pipeline_parser": ".command",
    "build_pipeline_parser": ".command",
    "build_step": ".command",
    "run_pipeline": ".command",
    "NoMatchingSeriesError": ".errors",
    "PacsAuthError": ".errors",
    "PacsError": ".errors",
    "PacsRejectedError": ".errors",
    "PacsUnavailableError": ".errors",
    "PipelineError": ".errors",
    "StudyInputError": ".errors",
    "OutputIdentity": ".identity",
    "output_identity": ".identity",
    "has_identity": ".identity",
    "check_uid": ".paths",
    "remove_tree": ".paths",
    "remove_file": ".paths",
    "Outbox": ".outbox",
    "DicomWebPacs": ".pacs",
    "DimsePacs": ".pacs",
    "PacsAddress": ".pacs",
    "open_pacs": ".pacs",
    "parse_pacs_url": ".pacs",
    "RetryPolicy": ".retry",
    "SeriesInfo": ".selection",
    "SeriesRules": ".selection",
    "group_series": ".selection",
    "rules_for_bundle": ".selection",
    "select_series": ".selection",
    "volume_problem": ".selection",
    "StudyInput": ".sources",
    "studies_from_folder": ".sources",
    "study_from_dicomweb": ".sources",
    "OK_STATUSES": ".step",
    "STATUSES": ".step",
    "PipelineStep": ".step",
}

__all__ = [
    "add_pipeline_parser",
    "build_pipeline_parser",
    "run_pipeline",
    "build_step",
    "PASSWORD_ENV",
    "PipelineStep",
    "STATUSES",
    "OK_STATUSES",
    "BundleRunner",
    "BundleRunError",
    "SEG_TYPES",
    "parse_override",
    "SeriesRules",
    "SeriesInfo",
    "rules_for_bundle",
    "group_series",
    "select_series",
    "volume_problem",
    "StudyInput",
    "studies_from_folder",
    "study_from_dicomweb",
    "PacsAddress",
    "parse_pacs_url",
    "open_pacs",
    "DicomWebPacs",
    "DimsePacs",
    "RetryPolicy",
    "Outbox",
    "OutputIdentity",
    "output_identity",
    "has_identity",
    "check_uid",
    "remove_tree",
    "remove_file",
    "PipelineError",
    "StudyInputError",
    "NoMatchingSeriesError",
    "PacsError",
    "PacsUnavailableError",
    "PacsAuthError",
    "PacsRejectedError",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
