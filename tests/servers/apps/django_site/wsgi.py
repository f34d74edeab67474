"""WSGI entry point of the test site."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.servers.apps.django_site.settings")
application = get_wsgi_application()
