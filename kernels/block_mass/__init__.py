"""Exact attention mass per (query block, key block) in one Triton kernel (kernel, ops); the torch reference is ``vidhash.selection.oracle.block_mass``."""
