"""A fake provider's batch API (OpenAI's /v1/files and /v1/batches) at the HTTP layer.

A batch stays `in_progress` until the test calls `complete()`; its output file then answers
each line with "echo: <its last message>" and the fake upstream's usage (PROMPT_TOKENS,
COMPLETION_TOKENS), in reverse order (a provider's output need not follow its input's). A line
whose model is `fake-400` gets a 400 in the error file. While `fail_creates` is above zero,
`POST /v1/batches` answers 500 (and counts it down): a submission that fails, then may succeed.
"""

from __future__ import annotations

import secrets
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, free_port


class FakeBatchProvider:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.cancelled: list[str] = []
        self.keys: set[str] = set()  # the API keys the gateway presented
        self.fail_creates = 0  # the next this many batch creations answer 500
        self.create_calls = 0
        self._done = False
        self.app = Starlette(
            routes=[
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/v1/files/{id}/content", self._content, methods=["GET"]),
                Route("/v1/batches", self._create, methods=["POST"]),
                Route("/v1/batches/{id}", self._retrieve, methods=["GET"]),
                Route("/v1/batches/{id}/cancel", self._cancel, methods=["POST"]),
            ]
        )

    def complete(self) -> None:
        """Finish every batch not cancelled."""
        self._done = True

    def requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The lines the gateway submitted in one provider batch."""
        content = self.files[self.batches[batch_id]["input_file_id"]]
        return [orjson.loads(line) for line in content.splitlines()]

    async def _upload(self, request: Request) -> Response:
        self._seen(request)
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + await request.body())
        file_id = f"up-file-{secrets.token_hex(4)}"
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "file":
                self.files[file_id] = part.get_payload(decode=True)
        return _json({"id": file_id, "object": "file", "purpose": "batch"})

    async def _content(self, request: Request) -> Response:
        self._seen(request)
        return Response(self.files[request.path_params["id"]])

    async def _create(self, request: Request) -> Response:
        self._seen(request)
        self.create_calls += 1
        if self.fail_creates > 0:
            self.fail_creates -= 1
            error = {"error": {"message": "batch service unavailable", "type": "server_error"}}
            return Response(orjson.dumps(error), status_code=500, media_type="application/json")
        body = orjson.loads(await request.body())
        batch_id = f"up-batch-{secrets.token_hex(4)}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "input_file_id": body["input_file_id"],
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
        }
        return _json(self.batches[batch_id])

    async def _retrieve(self, request: Request) -> Response:
        self._seen(request)
        batch = self.batches[request.path_params["id"]]
        if self._done and batch["status"] == "in_progress":
            self._finish(batch)
        return _json(batch)

    async def _cancel(self, request: Request) -> Response:
        self._seen(request)
        batch = self.batches[request.path_params["id"]]
        self.cancelled.append(batch["id"])
        batch["status"] = "cancelled"
        return _json(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        output, errors = [], []
        for line in reversed(self.requests(batch["id"])):
            body = line["body"]
            item = {"id": f"req-{secrets.token_hex(3)}", "custom_id": line["custom_id"]}
            if body["model"] == "fake-400":
                error = {"message": "bad request", "type": "invalid_request_error"}
                response = {"status_code": 400, "body": {"error": error}}
                errors.append({**item, "response": response, "error": None})
                continue
            text = body["messages"][-1]["content"]
            answer = {
                "id": f"chatcmpl-{secrets.token_hex(3)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"echo: {text}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                },
            }
            response = {"status_code": 200, "request_id": item["id"], "body": answer}
            output.append({**item, "response": response, "error": None})
        for field, items in (("output_file_id", output), ("error_file_id", errors)):
            if items:
                file_id = f"up-file-{secrets.token_hex(4)}"
                self.files[file_id] = b"".join(orjson.dumps(i) + b"\n" for i in items)
                batch[field] = file_id
        batch["status"] = "completed"

    def _seen(self, request: Request) -> None:
        self.keys.add(request.headers.get("authorization", ""))


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


class RunningBatchProvider:
    """The fake batch provider on loopback, from a background thread."""

    def __init__(self) -> None:
        self.fake = FakeBatchProvider()
        self.port = free_port()
        config = uvicorn.Config(
            self.fake.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RunningBatchProvider:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake batch provider did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
