"""Hashed memory: FIFO and merge writes, top-k read (kernel, ops, naive)."""
