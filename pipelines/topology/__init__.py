"""Topology features: persistent homology of each window's interaction graph."""
