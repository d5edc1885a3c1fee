"""Journeys: YAML-defined reactions to customer events, and their conditions."""
