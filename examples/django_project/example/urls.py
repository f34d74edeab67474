from django.urls import include, path

from example import views

api_v1 = [
    path("hello/", views.hello),
    path("items/<int:item_id>/", views.item),
    path("export/", views.export),
    path("quotes/", views.Quote.as_view()),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("healthz", views.healthz),
]
