"""Planning: configuration search over a space (planner) and single changes against a base (what-if)."""
