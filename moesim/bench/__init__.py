"""Speed benchmarks (kernels, network, engine, planner) and the GPU microbenchmark harness (`micro/`)."""
