"""A service process: its composition root, HTTP shell, settings and admin tools."""
