"""Signatures: projection, sign bits and packing, pooled over blocks or routed to buckets (kernel, ops, naive)."""
