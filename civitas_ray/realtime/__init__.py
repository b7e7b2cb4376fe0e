"""Events and live updates: the Redis Streams event bus and the WebSocket hub."""
