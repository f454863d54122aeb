"""Offline video index and text search: store (the on-disk index), topk (exact and
approximate search over sharded rows), model (the model behind an index), sources and
build (embedding videos into an index), query (text queries: `TextSearcher`).

Layer: none of its own (imports nothing); each module names its layer.
"""
