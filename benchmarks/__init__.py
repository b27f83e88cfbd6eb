"""moai-forge benchmarks: `python -m benchmarks` runs every one with its defaults (`make bench`)."""
