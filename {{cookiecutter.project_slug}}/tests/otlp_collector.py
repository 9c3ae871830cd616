"""OTLP/HTTP trace receivers for the tracing tests: the service's real exporter sends to them.

- `Collector` accepts `POST /v1/traces` as an OpenTelemetry collector does and decodes each
  request with opentelemetry-proto (`ExportTraceServiceRequest`), so a test sees the spans as
  they left the process, attributes and ids included, and the raw bytes for a secret search.
  It decodes when asked (`spans`), not as it receives: once a request is answered its thread
  holds nothing of it but the bytes, which the memory tests leave out of their count.
- `StalledCollector` takes connections and never answers: the exporter's requests wait for
  their timeout, as with a collector that hangs.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector decoded it; ids as W3C hex, attributes as Python values."""

    name: str
    kind: str  # "server", "client", ...
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: str  # "unset", "ok", "error"
    resource: dict[str, Any]


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {item.key: plain(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={item.key: plain(item.value) for item in span.attributes},
                        status=Status.StatusCode.Name(span.status.code)
                        .removeprefix("STATUS_CODE_")
                        .lower(),
                        resource=resource,
                    )
                )
    return spans


class Collector:
    """An OTLP/HTTP receiver on a free port of 127.0.0.1 (`endpoint`), in a thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != TRACES_PATH:
                    self.send_error(404)
                    return
                with collector._lock:
                    collector._bodies.append(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            bodies = list(self._bodies)
        return [span for body in bodies for span in decode(body)]

    def raw(self) -> bytes:
        """Every request body received, as sent: what a secret search looks through."""
        with self._lock:
            return b"".join(self._bodies)

    def take(self) -> list[ReceivedSpan]:
        """The spans received so far, forgotten here: a long run (the bench's) stays small."""
        with self._lock:
            bodies, self._bodies = self._bodies, []
        return [span for body in bodies for span in decode(body)]

    def clear(self) -> None:
        with self._lock:
            self._bodies.clear()


class StalledCollector:
    """Listens on a free port and never accepts: connections wait in the backlog, unanswered."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __enter__(self) -> StalledCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
