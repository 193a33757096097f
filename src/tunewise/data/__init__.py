"""Examples in: records and their shapes, the pool readers, the built-in demo pool, the scored example table."""
