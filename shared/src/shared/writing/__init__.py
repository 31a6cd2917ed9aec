"""The writing side, inside the business transaction: aggregates record events, the unit of
work writes them to the outbox (or holds them, debounced), the relay publishes them to Kafka."""
