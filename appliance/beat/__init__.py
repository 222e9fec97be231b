"""Beat: one active scheduler across hosts, under a Redis lease."""
