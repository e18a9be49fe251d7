"""Prepared data as the ranks read it: the manifest, the memory-mapped shards, the sharded stream."""
