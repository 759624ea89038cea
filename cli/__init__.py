"""The face at the terminal: tables, progress bars and the text a person reads.

Imported only by the command line (and, through it, the demo), never by `jobs/` or `core/`.
rich is imported here, so a command that prints nothing of this kind never pays for it.
"""
