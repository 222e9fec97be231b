"""Task records: one database row per task that passes through the appliance."""
