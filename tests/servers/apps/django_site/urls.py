from django.urls import path

from tests.servers.apps.django_site import views

urlpatterns = [
    path("health", views.health),
    path("api/work", views.work),
    path("api/stream", views.stream),
    path("api/async", views.work_async),
    path("api/astream", views.stream_async),
]
