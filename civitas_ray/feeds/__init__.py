"""City feed adapters: smart meters, traffic signal controllers, weather."""
