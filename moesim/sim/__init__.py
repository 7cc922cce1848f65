"""Simulation of one step: the SimPy engine (alone owns simpy) and `simulate(scenario) -> Result`."""
