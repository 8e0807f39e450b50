"""Daily Aggregator client."""
