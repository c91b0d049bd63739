"""The evaluation report: the table (:mod:`.tables`), the figures (:mod:`.figures`), the lines on the model
explained (:mod:`.model_quality`) and the folder (:mod:`.folder`)."""

from medcam_monai.evaluation.report.folder import write_report
from medcam_monai.evaluation.report.model_quality import model_lines
from medcam_monai.evaluation.report.tables import METRICS, MetricSpec, format_cell, markdown_table, summaries, summarise

__all__ = ["write_report", "model_lines", "METRICS", "MetricSpec", "format_cell", "markdown_table", "summarise", "summaries"]
