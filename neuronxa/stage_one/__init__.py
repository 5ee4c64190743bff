"""Stage one: the model's forward pass over a corpus with FFN probes, pooled on the fly, cached in a Zarr store."""
