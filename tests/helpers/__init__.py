"""Test helpers: real servers and processes, started and stopped by fixtures."""
