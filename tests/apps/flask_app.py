"""A Flask app from PyPI (run as `flask_app:app`), wrapped in
wsgiref.validate.validator like every other test app."""

import hashlib
import json
import warnings
from pathlib import Path
from wsgiref.validate import validator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

# After the imports: warnings raised while importing Flask itself are not the
# server's business.
warnings.simplefilter("error")

flask = Flask(__name__)


@flask.post("/form")
def form():
    return jsonify({key: request.form.getlist(key) for key in request.form})


@flask.post("/json")
def json_in_out():
    data = request.get_json()
    return jsonify({"received": data, "sum": sum(data.get("numbers", []))})


@flask.post("/upload")
def upload():
    data = request.get_data()
    return jsonify({"length": len(data), "sha256": hashlib.sha256(data).hexdigest()})


@flask.get("/stream")
def stream():
    n = int(request.args.get("n", "5"))

    def lines():
        for i in range(n):
            # request is only reachable here thanks to stream_with_context.
            yield json.dumps({"i": i, "path": request.path}) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@flask.get("/where")
def where():
    # Where this app's Python and its Flask come from (tests/integration/test_package.py).
    import sys

    import flask as flask_module

    return jsonify({"executable": sys.executable, "flask": flask_module.__file__})


@flask.get("/download")
def download():
    # send_file goes through environ["wsgi.file_wrapper"].
    return send_file(Path(__file__), mimetype="text/x-python", as_attachment=True,
                     download_name="flask_app.py")


def server_input(environ, start_response):
    # Werkzeug reads the body with read() (no size) when the request is
    # wsgi.input_terminated, which the validator's input wrapper forbids; so
    # Flask gets the server's own wsgi.input back. Everything else (environ,
    # start_response, the response iterable, close()) stays validated.
    environ["wsgi.input"] = environ["wsgi.input"].input
    return flask(environ, start_response)


app = validator(server_input)
