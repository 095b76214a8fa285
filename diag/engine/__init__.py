"""The feature-extraction engine: one forward pass per data set, embeddings storage and cache."""
