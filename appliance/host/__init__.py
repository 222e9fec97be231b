"""The host's process supervision: `appliance up` and the supervisord config."""
