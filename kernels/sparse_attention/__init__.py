"""Block-sparse flash attention over a per-query-block list of key blocks (kernel, ops, naive)."""
