"""Notifications: who must know about an incident, and the channels that tell them."""
