"""Alembic's scripts. A wheel installs this directory as the package service.db.migrations
(pyproject.toml), where service/db/migrate.py finds it; nothing imports it."""
