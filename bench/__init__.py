"""Benchmarks: each prints medians with min/max and writes JSON under bench/results/."""
