"""Benchmarks (python -m engine bench NAME): measured in one process, compared as ratios, since
this machine is shared and noisy. Results go to stdout as one JSON line."""
