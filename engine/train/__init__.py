"""Training: the DEML joint loop, the background job and its registry, torchrun data parallelism."""
