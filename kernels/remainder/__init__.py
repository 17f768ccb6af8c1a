"""The block-mean remainder: the key blocks a selection did not keep, one mean token each (kernel, ops, naive)."""
