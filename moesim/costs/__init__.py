"""Cost models as pure functions: routing, placement, traffic, collectives, the max-min network, compute and memory."""
