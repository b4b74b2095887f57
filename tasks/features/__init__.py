"""Turning the aligned table into feature files: tabular preprocessing and cached embeddings."""
