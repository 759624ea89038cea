"""The files of a reconcile run, by format, and reading a stored report back.

- `files.py`    the run's four file names, the CSV of discrepant users and the JSON summary's text
- `document.py` the finance report's document, its roll-forward's lines and how numbers are written:
                what every format draws (`charts.py`, `xlsx.py` and `finance.py` import it, not each other)
- `finance.py`  gathers the document (from the stored summary and the reconcile tables) and renders it
                as HTML (`templates/`, `charts.py`) and as a workbook (`xlsx.py`)
- `stored.py`   a stored report in a file format again (`python scheduler.py report`)

The terminal's table of a report is the face's (`cli/report.py`); the summary itself is built by
`jobs/reconcile_summary.py`.
"""
