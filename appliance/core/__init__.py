"""Keys, defaults, exit codes and text helpers: stdlib only, so the health check can import them."""
