"""HTTP front: ``create_app(settings)`` and the API routers under ``web.api``."""
