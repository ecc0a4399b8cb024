"""URLs of the perf lab's Django project: a hello view and a 10 KB JSON view, through
startproject's default middleware (perf/django_rss.py)."""

from django.http import HttpResponse, JsonResponse
from django.urls import path

ITEMS = [{"id": i, "name": "item %d" % i, "tags": ["a", "b", "c"], "price": i * 1.5} for i in range(150)]


def hello(request):
    return HttpResponse(b"Hello, World!", content_type="text/plain")


def json_10k(request):
    return JsonResponse({"items": ITEMS})


urlpatterns = [
    path("", hello),
    path("json/", json_10k),
]
