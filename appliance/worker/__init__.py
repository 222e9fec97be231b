"""The worker unit: launch, supervision, heartbeats, recycling and the lost-child policy."""
