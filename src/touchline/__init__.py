"""touchline: self-hosted trigger communications.

Customer events come in over the Segment tracking API, journeys written as
YAML files react to them, and a durable engine keeps their timing across
restarts on SQLite or PostgreSQL.
"""

__version__ = "0.1.0"
