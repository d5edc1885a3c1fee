"""HTTP API routers: ``ingest`` (Segment tracking API); ``admin`` and others join here."""
