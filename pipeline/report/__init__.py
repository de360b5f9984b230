"""Reports: report.json, report.md and a self-contained report.html from an evaluation's results."""

from .render import format_summary, write_report

__all__ = ["format_summary", "write_report"]
