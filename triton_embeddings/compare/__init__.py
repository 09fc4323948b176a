"""`embeddings-compare` and `embeddings-reembed`: A/B quality, speed and cost of embedding endpoints on your data."""
