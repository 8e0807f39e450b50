"""Every SQL statement of the service: migrations and named queries."""
