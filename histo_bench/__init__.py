"""histo-bench's foundation, beneath every other package: the registry, the console, atomic writes, the error root,
the wording of what data a result ran on, seeding, device and precision, optional imports.

It imports nothing from ingest, models, pipelines or benchmark.
"""
