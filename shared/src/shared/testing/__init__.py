"""Helpers for the suite's own tests against the real PostgreSQL and Kafka (never fakes of
them): throwaway databases, topics and consumer groups, and waiting with a deadline."""
