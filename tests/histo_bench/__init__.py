"""Tests of the foundation package ``histo_bench``."""
