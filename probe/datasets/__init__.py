"""Image data sets as uint8 tensors: what data-set plugins build on (the sealed cache, checked files, downloads)."""
