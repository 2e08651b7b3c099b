"""Synthetic data, generated on first use: H&E-like BreakHis trees and pyramidal slides (tests, demo, benchmarks)."""
