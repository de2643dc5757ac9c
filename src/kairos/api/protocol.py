"""The HTTP protocol `kairos serve` runs: uvicorn's httptools one, except that a request
the parser cannot read (a request line past its ~64 KiB limit, broken framing) gets
the same JSON error body as every other 4xx instead of a plain-text 400."""

from __future__ import annotations

import json

from kairos.api.errors import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn: then uvicorn's own choice serves
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def http_protocol() -> type | str:
    return JsonErrorsHttpTools if HttpToolsProtocol is not None else "auto"


if HttpToolsProtocol is not None:

    class JsonErrorsHttpTools(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(error_body("bad_request", f"{msg} (unreadable request line, headers or "
                                         "framing; a URL over 16 KiB is refused)")).encode()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: " + str(len(body)).encode() + b"\r\n",
                     b"connection: close\r\n", b"\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()
