"""MQTT ingest: the bridge from the broker to the telemetry hypertable (docs/mqtt.md)."""
