"""moesim: a cluster simulator and capacity planner for Mixture-of-Experts models on GPU clusters."""

__version__ = "0.1.0"
