"""Native launcher for the suite's infrastructure (PostgreSQL, Kafka, Jaeger) and services.

Run it as ``python -m infra <command>``; tests use the API in :mod:`infra.components`.
"""
