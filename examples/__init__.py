"""A small project declaring its own jobq job types (see examples/README.md)."""
