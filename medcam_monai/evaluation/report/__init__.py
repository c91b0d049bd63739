"""The evaluation report: the table (:mod:`.tables`), the figures (:mod:`.figures`) and the folder (:mod:`.folder`)."""

from medcam_monai.evaluation.report.folder import write_report
from medcam_monai.evaluation.report.tables import METRICS, MetricSpec, format_cell, markdown_table, summaries, summarise

__all__ = ["write_report", "METRICS", "MetricSpec", "format_cell", "markdown_table", "summarise", "summaries"]
