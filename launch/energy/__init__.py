"""A rank's energy sampler: its meters, the sampling thread, and on rank 0 the live bill and budget."""
