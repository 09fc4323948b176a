"""Model kinds: each module declares one kind's steps, tensors, verification reference and bar (`base.Kind`);
`triton_embeddings.export.flow` exports any of them."""
