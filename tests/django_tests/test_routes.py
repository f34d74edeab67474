"""Route templates: path(), include() prefixes, re_path() simplified, one constant when unmatched."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory

from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.testing import CapturedEvents
from dodo_ingest_django.routes import resolve_route, route_of, template_for

CUSTOMER = {"HTTP_X_CUSTOMER": "cus_routes"}


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("api/items/<int:item_id>/", "/api/items/<int:item_id>/"),
        ("", "/"),
        ("^$", "/"),
        (r"^articles/(?P<year>[0-9]{4})/$", "/articles/<year>/"),
        (r"^old/([0-9]+)/([a-z]+)/$", "/old/<arg1>/<arg2>/"),
        (r"api/v1/reports/(?P<year>[0-9]{4})/$", "/api/v1/reports/<year>/"),
        (r"^legacy/(?P<year>[0-9]{4})/(?P<slug>[\w-]+)\.json$", "/legacy/<year>/<slug>.json"),
        (r"^files/(?P<path>.*)$", "/files/<path>"),
        (r"^a/[0-9]+/b/\d+/?$", "/a/<param>/b/<param>/"),
        (r"^export\.(?:json|csv)\Z", "/export.<param>"),
        (r"^page/(?P<n>\d+)(?:/(?P<sub>\w+))?/$", "/page/<n>/<sub>/"),
        (r"^x/(?i)y(?=z)", "/x/y"),
    ],
)
def test_template_for(route: str, template: str) -> None:
    assert template_for(route) == template


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("/api/items/17/", "/api/items/<int:item_id>/"),
        ("/api/v1/orders/abc-1/", "/api/v1/orders/<slug:ref>/"),  # include() prefix
        ("/api/v1/reports/2024/", "/api/v1/reports/<year>/"),  # re_path inside a path include
        ("/legacy/2023/some-slug.json", "/legacy/<year>/<slug>.json"),
        ("/old/99/", "/old/<arg1>/"),
        ("/nested/5/", "/nested/<pk>/"),  # re_path include of re_path
        ("/no/such/thing", UNMATCHED_ENDPOINT),
    ],
)
def test_endpoint_of_real_requests(client: Client, events: CapturedEvents, url: str, endpoint: str) -> None:
    client.get(url, **CUSTOMER)
    assert [e.metadata["endpoint"] for e in events] == [endpoint]
    digits = [part for part in url.split("/") if part.isdigit()]
    assert not any(d in events[0].metadata["endpoint"] for d in digits)  # never the raw path


def test_route_of_unresolved_request_is_none() -> None:
    request = RequestFactory().get("/api/items/1/")
    assert route_of(request) is None
    assert resolve_route(request) == "/api/items/<int:item_id>/"
    assert resolve_route(RequestFactory().get("/nope")) is None
