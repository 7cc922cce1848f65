"""Request-level serving (issue 16): load, scheduler, step-time function, metrics, one run."""
