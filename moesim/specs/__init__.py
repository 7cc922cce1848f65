"""Specs as records: GPUs and systems, MoE architectures (params, FLOPs/bytes per op, HF import), number formats, parallel plans."""
