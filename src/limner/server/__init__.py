"""The HTTP API (FastAPI): one module per resource, routes in app.py."""
