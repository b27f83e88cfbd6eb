"""Shipped expert profiles (profiles/*.yaml) and training configs (*.yaml): data, read by name."""
