"""AI features: embeddings, LLM backends and the agents built on them."""
