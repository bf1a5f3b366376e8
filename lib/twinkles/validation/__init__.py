"""Validation against the simulation's truth: matching and metrics."""
