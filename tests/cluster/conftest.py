"""Fixtures of the cluster tier: it starts its own multi-node Ray cluster (scripts/local_cluster.py) per module."""
