"""Models: the Flax CLIP (`clip`), its building blocks (`layers`) and Prompt Switch
(`prompt_switch`).

Layer: models (imports nothing; each module names what it imports).
"""
