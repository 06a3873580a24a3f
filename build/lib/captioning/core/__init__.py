"""Small helpers every part shares: the cache folder and atomic writes, graph functions and zero-copy tensors, locks,
names that become paths and filters, the tracking URI and the tags of a study's runs, lazily imported registry
entries. Nothing here imports another part of the package."""
