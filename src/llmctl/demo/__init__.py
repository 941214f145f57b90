"""`llmctl demo`: a real llama-server, a real small model, every everyday command once.

Apart from the core: the core knows nothing of demos or of where models come from.
"""
