"""The default route resolver of plain WSGI apps: ids never become endpoints."""

from __future__ import annotations

import pytest

from dodo_ingest.routes import PLACEHOLDER, default_route_resolver, is_identifier, normalize_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("", "/"),
        ("/users", "/users"),
        ("/users/123", "/users/{id}"),
        ("/users/123/orders/9f1c2b7e4d5a", "/users/{id}/orders/{id}"),
        ("/api/v1/items/550e8400-e29b-41d4-a716-446655440000", "/api/v1/items/{id}"),
        ("/api/v1/items/550e8400e29b41d4a716446655440000", "/api/v1/items/{id}"),
        ("/customers/cus_NffrFeUfNVzHib", "/customers/{id}"),
        ("/tokens/aB3dE5fG7hJ9kL", "/tokens/{id}"),
        ("/reports/2024-01-31", "/reports/{id}"),
        ("/files/" + "x" * 80, "/files/{id}"),
        ("/v1/healthz", "/v1/healthz"),
        ("/blob/deadbeef", "/blob/deadbeef"),
        ("/users/123/", "/users/{id}/"),
    ],
)
def test_normalize_path_replaces_id_like_segments(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize("word", ["users", "v1", "orders", "search", "deadbeef", "2fa", "oauth2"])
def test_ordinary_words_are_kept(word: str) -> None:
    assert not is_identifier(word)


def test_resolver_maps_404_to_unmatched_and_normalizes_otherwise() -> None:
    environ = {"PATH_INFO": "/users/42"}
    assert default_route_resolver(environ, 404) is None
    assert default_route_resolver(environ, 200) == f"/users/{PLACEHOLDER}"


def test_resolver_decodes_non_ascii_paths_as_utf8() -> None:
    raw = "/caf\u00e9/7".encode().decode("latin-1")  # how PEP 3333 hands the path over
    assert default_route_resolver({"PATH_INFO": raw}, 200) == "/caf\u00e9/{id}"
