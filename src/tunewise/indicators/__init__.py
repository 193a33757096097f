"""Per-example indicators: the registry, the content-addressed cache, and the local, streaming and Ray engines."""
