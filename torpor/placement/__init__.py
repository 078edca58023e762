"""Placement: pure decisions about where an instance goes (GPUs and memory slices, pools, quotas)."""
