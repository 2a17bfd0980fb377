"""The inspection in the wizard: its lines as HTML and its plots as Image widgets (ipywidgets 7.7 and 8 alike)."""

from __future__ import annotations

import html

from utils.inspection.report import InspectionReport

COLOURS = {"pass": "#2e7d32", "warn": "#b26a00", "fail": "#c62828", "skipped": "#666666"}


def report_html(report: InspectionReport) -> str:
    """One line per check, its verdict coloured, then where the report was written."""
    rows = [f"<b>{html.escape(report.model)}</b>", html.escape(report.precision_line),
            html.escape(f"Batch: {report.batch_source}")]
    for c in report.checks:
        fix = f" <i>Fix: {html.escape(c.fix)}</i>" if c.fix and c.verdict in ("warn", "fail") else ""
        rows.append(f"<code>{c.name}</code> <b style='color:{COLOURS[c.verdict]}'>{c.verdict}</b> "
                    f"{html.escape(c.message)}{fix}")
    rows += [html.escape(line) for line in report.lines()[3 + len(report.checks):]]
    return "<div class='kit-inspection' style='line-height:1.5'>" + "<br>".join(rows) + "</div>"


def plot_images(report: InspectionReport) -> list:
    """An ipywidgets Image per plot the report wrote (none when it was not written to a folder)."""
    import ipywidgets as widgets

    if report.folder is None:
        return []
    images = []
    for c in report.checks:
        if c.plot and (report.folder / c.plot).exists():
            image = widgets.Image(value=(report.folder / c.plot).read_bytes(), format="png",
                                  layout=widgets.Layout(max_width="100%"))
            image.add_class(f"wizard-inspect-{c.name}")
            images.append(image)
    return images


def show_report(report: InspectionReport) -> None:
    """In a notebook: the report's lines, then its plots."""
    from IPython.display import Image, display

    print(report)
    for c in report.checks:
        if c.plot and report.folder is not None:
            display(Image(filename=str(report.folder / c.plot)))
