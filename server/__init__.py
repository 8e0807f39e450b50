"""Daily Aggregator server."""
