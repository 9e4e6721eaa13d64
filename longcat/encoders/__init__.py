"""Encode one shard for the caches: videos to normalised VAE latents, captions to unpadded umT5 embeddings.

`decode` reads and decodes a shard's clips ahead of the encoder, `vae` and `text` encode and hold the
rules' job entry points, `dtypes` maps the cache's dtype names to torch's.
"""
