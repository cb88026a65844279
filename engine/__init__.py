"""Conceptscape engine: deep meta-learning in concept space (DEML), with no UI dependency."""
