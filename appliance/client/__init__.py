"""The submitting side: what a process checks before it publishes work, and how it publishes."""
