"""A Django site for the real-server tests: sync and async views, served over WSGI and ASGI."""
