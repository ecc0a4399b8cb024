"""The application of the operations tests (config, logs): answers with headers a log format
can name, the environment it was given, and its process's umask."""

import os


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/env/"):
        body = os.environ.get(path[len("/env/"):], "(unset)").encode()
    elif path == "/umask":
        mask = os.umask(0)
        os.umask(mask)
        body = oct(mask).encode()
    elif path.startswith("/status/"):
        code = int(path[len("/status/"):])
        start_response("%d Status" % code, [("Content-Type", "text/plain")])
        return [b"status\n"]
    else:
        body = b"hello from ops_app\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "ops \"quoted\""),
                              ("Content-Length", str(len(body)))])
    return [body]


def paste_factory(global_conf, **local_conf):
    """PasteDeploy's app factory (`use = call:ops_app:paste_factory`)."""
    return app
