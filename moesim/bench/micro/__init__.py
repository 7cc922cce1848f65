"""Microbenchmarks in PyTorch: GEMM, memory copy, collectives and EP dispatch, as results files.

The harness measures what the simulator's cost models assume (GEMM throughput, copy bandwidth,
collective bus bandwidth, EP all-to-all with real skewed token counts) and writes the schema
`moesim-bench/v1` (`results.py`) that the CUDA benchmarks also write and the calibration reads.

Conventions follow nccl-tests: every run checks the data it moved (rank-encoded payloads, a
float64 GEMM reference) before it times anything, prints a header with every parameter, a units
row and fixed columns, and reports `check.passed`; a failed check writes no results file.

torch is an optional dependency (`pip install moesim[bench]`): nothing here imports it at
module level, so `import moesim.bench.micro` works without it; the benchmarks raise a one-line
`MoesimError` when it is missing. Entry point: `moesim.bench.micro.run.run_benchmark`.
"""
