"""One serving instance: sequences, the paged KV block manager and the batch schedulers."""
