"""Channels: small adapters behind one protocol (:class:`~touchline.messaging.channels.base.Channel`)."""
