#!/usr/bin/env python3
"""moto's S3 emulator for scripts/stack: what `moto_server -H HOST -p PORT`
runs, plus one fix for signature checking.

Once authentication is switched on (see s3_bootstrap.py), moto answers a
request that carries no Authorization header with a 500 (a KeyError inside
moto) instead of the 403 real S3 sends, and a client would take that for a
retriable server error. Such requests are refused here with 403 AccessDenied,
as are presigned (query-string) URLs, which moto cannot check either.

Second fix: moto checks a signature against the query string as werkzeug
hands it over, with percent-escapes decoded (prefix=backups/db/), while
SigV4 signs every query value encoded (prefix=backups%2Fdb%2F), as AWS S3,
Spaces and MinIO check it; so even boto3's own listings with a '/' in the
prefix were refused. The query is re-encoded per SigV4 before moto signs it.

Third: until s3_bootstrap.py has switched authentication on, only its own
requests (signed with the access key "bootstrap") and /moto-api are served;
anything else gets 503 SlowDown, as a store that is still starting. Clients
that kept retrying through a restart of the emulator would otherwise run
while authentication is off, and their requests would draw from moto's
seeded random generator between the seed and the creation of the access
key: the key would come out different and the clients' keys refused.

Usage: s3_server.py HOST PORT
"""

import signal
import sys

from moto import settings
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from moto.iam import access_control
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit
from werkzeug.serving import run_simple

DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code>"
    b"<Message>Access Denied: request is not signed with AWS Signature V4 "
    b"in an Authorization header</Message></Error>"
)
STARTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code>"
    b"<Message>the store is starting</Message></Error>"
)
BOOTSTRAP_CREDENTIAL = "Credential=bootstrap/"


class RequireSignature:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        auth_on = settings.INITIAL_NO_AUTH_ACTION_COUNT != float("inf")
        if (
            not auth_on
            and not environ.get("PATH_INFO", "").startswith("/moto-api")
            and BOOTSTRAP_CREDENTIAL not in environ.get("HTTP_AUTHORIZATION", "")
        ):
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(STARTING))),
                    ("Retry-After", "1"),
                ],
            )
            return [STARTING]
        if (
            auth_on
            and not environ.get("PATH_INFO", "").startswith("/moto-api")
            and "HTTP_AUTHORIZATION" not in environ
        ):
            start_response(
                "403 Forbidden",
                [
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(DENIED))),
                ],
            )
            return [DENIED]
        return self.app(environ, start_response)


_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _create_aws_request_sigv4_query(self):
    request = _create_aws_request(self)
    parts = urlsplit(request.url)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(
            quote(k, safe="-_.~") + "=" + quote(v, safe="-_.~") for k, v in pairs
        )
        request.url = urlunsplit(parts._replace(query=query))
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request_sigv4_query


def stop(signum, frame):
    sys.exit(0)


def main(argv):
    if len(argv) != 3:
        print("usage: s3_server.py HOST PORT", file=sys.stderr)
        return 2
    host, port = argv[1], int(argv[2])
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, RequireSignature(app), threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
