"""PostgreSQL: the adapters of the machinery's ports, connections, migrations, housekeeping."""
