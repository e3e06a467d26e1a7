"""Pure tensor core: Lovász losses, embedding kernels, HLE loss, decoding, PQ statistics."""
