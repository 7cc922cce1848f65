"""The cluster: the topology graph of a system (alone owns networkx) and the validated scenario."""
