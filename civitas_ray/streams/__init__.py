"""Live state of asset streams: window, online forecast, anomaly scores, quality flags."""
