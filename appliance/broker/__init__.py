"""Redis as broker and result store: transport, result backend, dead letters, admin clients."""
