"""ASGI entry point of the test site (the middleware runs async-natively with async views)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.servers.apps.django_site.settings")
application = get_asgi_application()
