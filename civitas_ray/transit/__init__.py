"""Transit feeds: GTFS static versions and GTFS-Realtime ingestion."""
