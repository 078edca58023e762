"""Placement: pure decisions about where an instance goes — GPUs and memory slices with their quota
(`gpus`), and priority pools with their restrictions and scale-in order (`pools`)."""
