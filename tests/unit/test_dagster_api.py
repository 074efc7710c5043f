"""The webserver client against a loopback HTTP server that answers like Dagster's webserver
does right after Postgres restarted: a stale pooled connection fails the first requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conflux.cli.dagster_api import STALE_CONNECTION, DagsterApiError, graphql


@pytest.fixture
def webserver():
    """Answers the first ``fail`` requests with a stale-connection error, then with data."""
    state = {"fail": 0, "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["seen"].append(body["query"])
            if len(state["seen"]) <= state["fail"]:
                payload = {"errors": [{"message": f"(psycopg2.OperationalError) {STALE_CONNECTION}"}]}
            else:
                payload = {"data": {"ok": len(state["seen"])}}
            out = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_a_query_is_sent_again_after_a_stale_connection(webserver):
    url, state = webserver
    state["fail"] = 2
    assert graphql(url, "query { ok }") == {"ok": 3}
    assert len(state["seen"]) == 3


def test_a_mutation_is_never_sent_twice(webserver):
    url, state = webserver
    state["fail"] = 1
    with pytest.raises(DagsterApiError, match=STALE_CONNECTION):
        graphql(url, "mutation { launch }")
    assert len(state["seen"]) == 1


def test_retries_are_bounded(webserver):
    url, state = webserver
    state["fail"] = 10
    with pytest.raises(DagsterApiError, match=STALE_CONNECTION):
        graphql(url, "query { ok }", stale_retries=3)
    assert len(state["seen"]) == 4
