"""Export sentence-transformers models into Triton model repositories, and serve them locally."""
