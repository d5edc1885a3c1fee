"""Messaging: templates, channels and (later) the dispatcher that sends from the outbox."""
