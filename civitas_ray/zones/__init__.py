"""zones domain."""
