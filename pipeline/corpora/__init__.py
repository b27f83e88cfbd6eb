"""Builders for the corpora moai-forge knows by name (sample, registered folders)."""
