"""The finance report (a reconcile's, or a closed month's period document), by format, and reading a
stored report back.

- `files.py`    the run's four file names, the CSV of discrepant users and the JSON summary's text
- `document.py` the finance report's document, its roll-forward's lines (in words, signed as they move
                the liability, with money and the previous period) and how numbers are written: what
                every format draws (`charts.py`, `xlsx.py` and `finance.py` import it, not each other)
- `finance.py`  gathers the document (a reconcile's from its stored summary and the reconcile tables; a
                closed month's from its period document alone, `period_report`) and renders it as HTML
                (`templates/`, `charts.py`) and as a workbook (`xlsx.py`)
- `stored.py`   a stored report in a file format again (`python scheduler.py report`)

The terminal's table of a report is the face's (`cli/report.py`); the summary itself is built by
`jobs/reconcile_summary.py`.
"""
