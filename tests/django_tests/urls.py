"""URLconf of the test project: path(), include() and re_path() routes."""

from __future__ import annotations

from django.urls import include, path, re_path

from tests.django_tests import views

v1 = [
    path("orders/<slug:ref>/", views.order),
    re_path(r"^reports/(?P<year>[0-9]{4})/$", views.legacy),
]

urlpatterns = [
    path("api/hello/", views.hello),
    path("api/items/<int:item_id>/", views.item),
    path("api/missing/<int:item_id>/", views.missing),
    path("api/v1/", include(v1)),
    re_path(r"^legacy/(?P<year>[0-9]{4})/(?P<slug>[\w-]+)\.json$", views.legacy),
    re_path(r"^old/([0-9]+)/$", views.legacy_unnamed),
    re_path(r"^nested/", include([re_path(r"^(?P<pk>\d+)/$", views.legacy)])),
    path("boom/", views.boom),
    path("echo/", views.echo),
    path("annotated/", views.annotated),
    path("helper/", views.helper),
    path("exempt/", views.exempt),
    path("health/", views.health),
    path("stream/", views.stream),
    path("stream-fails/", views.stream_fails),
    path("astream/", views.astream),
    path("download/", views.download),
    path("async/hello/", views.ahello),
    path("async/boom/", views.aboom),
    path("async/helper/", views.ahelper),
    path("drf/me/", views.Me.as_view()),
    path("drf/helper/", views.DrfHelper.as_view()),
]
