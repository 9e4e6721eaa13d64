"""The data stage, in pipeline order.

sources, local, s3, inventory, open_source    the clip source: list objects, read byte ranges
demo                                          synthetic clips written into a local source
manifest                                      one row per video with its caption; probe chunks
fetched, mp4, decode_check, probe, rejects    header-only probing: facts or a reject per object
captions                                      caption bytes to text, with the fixups recorded
buckets, frames                               resolution buckets, frame plans, decoding a clip
metadata                                      probe chunks -> metadata.parquet + rejected.parquet
shards                                        append-only shard assignment and per-shard lists
tables                                        atomic parquet writes
"""
