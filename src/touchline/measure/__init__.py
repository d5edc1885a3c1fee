"""Measuring what journeys and customers do: reports over the stored events."""
