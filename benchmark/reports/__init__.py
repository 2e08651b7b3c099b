"""Reports: the benchmark's results.md, training curves, Markdown -> HTML and the self-contained report.html."""
