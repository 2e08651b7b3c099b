"""The GPU check: one run of at most five minutes on the lent H200 (``benchmark/gpu_check.sh``), and its CPU
rehearsal (``benchmark/gpu_check.sh --rehearse``) that fails here on whatever would fail there.

Modules: :mod:`.plan` (what is measured, at which sizes, the anchors), :mod:`.carry` (what travels, checked before
any GPU time), :mod:`.device_site` (the GPU machine's package set, for the rehearsal), :mod:`.driver` (the steps in
order, each in its own process with a time budget), :mod:`.steps` (what each step does), :mod:`.slide` (a synthetic
slide tifffile writes without imagecodecs), :mod:`.summary` (the one-page ``summary.md``) and :mod:`.cli`.

:mod:`.carry` and :mod:`.device_site` import the standard library only: they run before the carried wheels are
installed.
"""
