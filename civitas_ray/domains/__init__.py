"""City domain read APIs: traffic flow and congestion, utilities consumption, public safety."""
