"""Verbalization: expert records → MoAI's auxiliary text (templates, thresholds, the aux row's key)."""
