"""Block selection: per query block, the key blocks of most similar signatures (kernel, ops, naive)."""
