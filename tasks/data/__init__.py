"""Reading the user's sources, typing them (ingest) and aligning them into one table (align)."""
