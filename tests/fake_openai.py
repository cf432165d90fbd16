"""A tiny OpenAI-compatible chat server for fast gateway tests: ``python fake_openai.py PORT [DELAY_S]``.

It answers ``/health``, ``/v1/models`` and ``/v1/chat/completions`` (plain or streamed as SSE, one word per
chunk, ``DELAY_S`` seconds apart, ``finish_reason`` on the last chunk, then ``[DONE]``), with token usage so
that the gateway can price each request. Streams use chunked transfer encoding like vLLM's server, so a
SIGKILL during a stream leaves an incomplete body: the cut a crashed vLLM server causes.

Markers in the last user message provoke failures, each only the first time that message is seen (so a retry
of the same request succeeds): ``[drop]`` aborts the stream after two words (an incomplete body), ``[early]``
ends it cleanly after two words without a finish_reason or ``[DONE]``, ``[busy]`` answers 503. The key
``sk-refused`` gets 401. ``GET /stats`` lists how many messages each chat request carried.
:class:`FakeBackend` runs it as a :class:`~vllm_workshop.server.ManagedServer`.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROMPT_TOKENS = 100  # fixed usage: at the lab prices one request costs 100*5e-7 + n*1e-6 dollars


def _chunk(text: str | None, finish: str | None, model: str) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if text is not None else {}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class JsonHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers with JSON bodies (the fakes of this file and of the cluster tests)."""

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Handler(JsonHandler):
    delay = 0.02
    seen: set[str] = set()  # messages whose failure marker already fired
    message_counts: list[int] = []  # messages per chat request received (GET /stats)
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json({})
        elif self.path == "/stats":
            self._json({"message_counts": self.message_counts})
        elif self.path == "/v1/models":
            self._json(
                {"object": "list", "data": [{"id": "lab-model", "object": "model", "owned_by": "fake"}]}
            )
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.headers.get("Authorization") == "Bearer sk-refused":
            self._json({"error": {"message": "invalid key", "type": "auth_error"}}, 401)
            return
        self.message_counts.append(len(request.get("messages") or []))
        text = str((request.get("messages") or [{}])[-1].get("content", ""))
        marker = next((m for m in ("[drop]", "[early]", "[busy]") if m in text and text not in self.seen), "")
        if marker:
            self.seen.add(text)
        if marker == "[busy]":
            self._json({"error": {"message": "busy", "type": "server_error"}}, 503)
            return
        model = request.get("model", "lab-model")
        words = [f"w{i} " for i in range(int(request.get("max_tokens") or 16))]
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(words),
            "total_tokens": PROMPT_TOKENS + len(words),
        }
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            self._json(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                    "usage": usage,
                }
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [_chunk(word, None, model) for word in words] + [_chunk(None, "length", model)]
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append({**_chunk(None, None, model), "choices": [], "usage": usage})
        for number, data in enumerate([*(json.dumps(event) for event in events), "[DONE]"]):
            if number == 2 and marker == "[drop]":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk: an incomplete body
                return
            if number == 2 and marker == "[early]":
                break
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
            time.sleep(self.delay)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def fake_backend(port: int, delay: float, log_dir: Path) -> Any:
    """A :class:`ManagedServer` running this file on ``port``, with an ``openai_base_url`` like a vLLM one."""
    from vllm_workshop.server import ManagedServer

    class FakeBackend(ManagedServer):
        @property
        def openai_base_url(self) -> str:
            return self.base_url + "/v1"

    command = [sys.executable, __file__, str(port), str(delay)]
    return FakeBackend(command, name="fake-vllm", port=port, log_dir=log_dir)


if __name__ == "__main__":
    Handler.delay = float(sys.argv[2]) if len(sys.argv) > 2 else Handler.delay
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
