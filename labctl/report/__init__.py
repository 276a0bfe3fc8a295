"""Reports of a run: terminal, Markdown, single-file HTML with an SVG ladder, and JSON.

Every format is drawn from one ``model.Report``, built from the run directory alone.
"""
