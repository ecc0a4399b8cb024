"""The Flask app of perf/frameworks.py: the same two endpoints as the Django project in
perf/apps/djangoapp, so the two frameworks are measured on the same work.

  /       hello: 200, text/plain, "Hello, World!" (13 bytes)
  /json   a JSON document of about 10 KB, serialised per request with `jsonify` from a
          fixed Python structure (the one Django's view serialises: 150 items)

Flask's defaults (no debug), so `jsonify` writes compact JSON with sorted keys (about 9 KB)
where Django's JsonResponse writes json.dumps' default separators (about 11 KB).
"""

from flask import Flask, jsonify

app = Flask(__name__)

ITEMS = [{"id": i, "name": "item %d" % i, "tags": ["a", "b", "c"], "price": i * 1.5} for i in range(150)]


@app.get("/")
def hello():
    return "Hello, World!", 200, {"Content-Type": "text/plain"}


@app.get("/json")
def json_10k():
    return jsonify(items=ITEMS)
