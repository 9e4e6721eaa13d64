"""The base model in the published LongCat-Video layout, materialised at `{results}/base_model`.

`layout` checks, finds and links a directory of that layout, `tiny` writes a small random one, `prepare`
is the base_model rule's work (one or the other), `loader` loads the parts for everything downstream.
"""
