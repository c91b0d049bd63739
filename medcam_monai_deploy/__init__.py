"""MONAI Deploy App SDK operators that explain models on DICOM series (optional: needs the SDK)."""

from medcam_monai_deploy.explain_operator import ExplainOperator, explanation_to_labels

__all__ = ["ExplainOperator", "explanation_to_labels"]
