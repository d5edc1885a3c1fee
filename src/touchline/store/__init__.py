"""Persistence: SQLAlchemy Core tables, queries, work claiming and migrations."""
