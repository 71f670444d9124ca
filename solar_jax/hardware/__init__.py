"""Accelerators: one table of chips (TPU and GPU) and GPU targets for compiles without a GPU."""
