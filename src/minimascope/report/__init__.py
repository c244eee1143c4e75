"""The study report: one HTML page with every table and figure of a study directory, and the
paper's claims checked against its numbers (``minimascope report STUDY_DIR``)."""

from minimascope.report.page import write_report

__all__ = ["write_report"]
