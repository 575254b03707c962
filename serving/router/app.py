"""The OpenAI-compatible front door: FastAPI routes over a Dispatcher.

Request bodies are parsed with vLLM's own OpenAI protocol models (the same validation, defaults and vLLM extras such
as `ignore_eos` that `vllm serve` applies) and answered with its response models. Ray Serve would be the other
choice, but `ray.serve` does not import from plain `ray` here (it needs the `ray[serve]` extra, for grpc
reflection), and its proxy would add a hop per token; FastAPI/uvicorn in the driver reaches the replica actors
directly.

    app = build_app(dispatcher, tokenizer, model_name, max_model_len)
"""


import json
import logging
import time

from serving.engines.config import Chunk
from serving.engines.replica import ReplicaFailed
from serving.router.dispatcher import Dispatcher, NoReplica, Overloaded, Request

log = logging.getLogger(__name__)

# Fields of a request body passed to vLLM's SamplingParams as they are (None: vLLM's default).
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos",
                   "min_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty", "skip_special_tokens")


class BadRequest(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, param: str | None = None):
    from fastapi.responses import JSONResponse

    kind = {400: "BadRequestError", 429: "RateLimitError", 503: "ServiceUnavailableError"}.get(status, "Error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def build_app(dispatcher: Dispatcher, tokenizer, model_name: str, max_model_len: int, metrics=None):
    """The ASGI app. `tokenizer` is the model's Hugging Face tokenizer (prompt length and chat template are the
    router's: the request is typed before it reaches any engine). `metrics`: a serving.router.metrics.RouterMetrics."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionResponseChoice,
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
        ChatMessage,
        DeltaMessage,
    )
    from vllm.entrypoints.openai.completion.protocol import (
        CompletionRequest,
        CompletionResponse,
        CompletionResponseChoice,
        CompletionResponseStreamChoice,
        CompletionStreamResponse,
    )
    from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList, UsageInfo

    app = FastAPI(title="loadwise router")

    async def parse(http: HttpRequest, model):
        raw = await http.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest("body", f"body: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise BadRequest("body", "body: expected a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "body"
            raise BadRequest(loc, f"{loc}: {err['msg']}") from None

    def sampling(body) -> dict:
        return {f: getattr(body, f) for f in SAMPLING_FIELDS if getattr(body, f, None) is not None}

    def limit(prompt_ids: list[int], max_tokens: int | None, field: str) -> int:
        """max_tokens to use; a prompt that leaves no room in the context is the `field`'s fault."""
        n = len(prompt_ids)
        if n == 0:
            raise BadRequest(field, f"{field}: empty prompt")
        if n >= max_model_len:
            raise BadRequest(field, f"{field}: {n} prompt tokens; this model's context is {max_model_len} tokens "
                                    "(prompt + max_tokens)")
        if max_tokens is None:
            return max_model_len - n
        if max_tokens < 1:
            raise BadRequest("max_tokens", "max_tokens: must be >= 1")
        if n + max_tokens > max_model_len:
            raise BadRequest("max_tokens", f"max_tokens: {n} prompt tokens + max_tokens {max_tokens} exceed this "
                                           f"model's context of {max_model_len} tokens")
        return max_tokens

    def completion_prompt(body) -> list[int]:
        p = body.prompt
        if body.n != 1:
            raise BadRequest("n", "n: only n = 1 is supported")
        if isinstance(p, str):
            return tokenizer(p, add_special_tokens=body.add_special_tokens).input_ids
        if isinstance(p, list) and p and all(isinstance(t, int) for t in p):
            return list(p)
        raise BadRequest("prompt", "prompt: one string or one list of token ids (batches are not supported)")

    def chat_prompt(body) -> list[int]:
        if body.n != 1:
            raise BadRequest("n", "n: only n = 1 is supported")
        msgs = []
        for i, m in enumerate(body.messages):
            content = m.get("content")
            if isinstance(content, list):  # content parts: the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise BadRequest(f"messages.{i}.content", f"messages.{i}.content: expected text")
            msgs.append({"role": m.get("role", "user"), "content": content})
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def sse(obj) -> str:
        return f"data: {obj.model_dump_json(exclude_none=True)}\n\n"

    async def serve(req: Request, stream: bool, chat: bool, include_usage: bool):
        """Admit (the first chunk), then answer whole or as server-sent events.

        The first chunk is awaited before the response starts, so admission and routing failures still get an HTTP
        status (429, 503) and the dispatcher's generator has started (its clean-up then runs however the client
        leaves)."""
        t0 = time.perf_counter()
        n_prompt = len(req.prompt_token_ids)
        chunks = dispatcher.stream(req)
        try:
            head = await chunks.__anext__()
        except Overloaded as e:
            if metrics is not None:
                metrics.rejected.inc()
            return _error(429, str(e))
        except (NoReplica, ReplicaFailed) as e:
            return _error(503, str(e))
        except StopAsyncIteration:
            head = Chunk((), "", "stop")

        async def rest():
            yield head
            # Read on after a last chunk too: the dispatcher's generator then ends normally and counts the request
            # served (a one-token answer's only chunk is its last).
            async for c in chunks:
                yield c

        if not stream:
            text, n_out, reason = [], 0, None
            try:
                async for c in rest():
                    text.append(c.text)
                    n_out += len(c.token_ids)
                    reason = c.finish_reason or reason
            except (NoReplica, ReplicaFailed) as e:
                return _error(503, str(e))
            if metrics is not None:
                metrics.observe(dispatcher, time.perf_counter() - t0, n_out)
            usage = UsageInfo(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out)
            if chat:
                return ChatCompletionResponse(id=f"chatcmpl-{req.id}", model=model_name, usage=usage, choices=[
                    ChatCompletionResponseChoice(index=0, message=ChatMessage(role="assistant", content="".join(text)),
                                                 finish_reason=reason)])
            return CompletionResponse(id=f"cmpl-{req.id}", model=model_name, usage=usage, choices=[
                CompletionResponseChoice(index=0, text="".join(text), finish_reason=reason)])

        async def events():
            n_out = 0
            first = True
            try:
                async for c in rest():
                    n_out += len(c.token_ids)
                    if chat:
                        delta = DeltaMessage(role="assistant", content=c.text) if first else DeltaMessage(
                            content=c.text)
                        yield sse(ChatCompletionStreamResponse(id=f"chatcmpl-{req.id}", model=model_name, choices=[
                            ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=c.finish_reason)]))
                    else:
                        yield sse(CompletionStreamResponse(id=f"cmpl-{req.id}", model=model_name, choices=[
                            CompletionResponseStreamChoice(index=0, text=c.text, finish_reason=c.finish_reason)]))
                    first = False
            except (NoReplica, ReplicaFailed) as e:
                yield f"data: {json.dumps({'error': {'message': str(e), 'code': 503}})}\n\n"
                return
            finally:
                await chunks.aclose()
            if include_usage:
                usage = UsageInfo(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out)
                cls = ChatCompletionStreamResponse if chat else CompletionStreamResponse
                yield sse(cls(id=f"{'chatcmpl' if chat else 'cmpl'}-{req.id}", model=model_name, choices=[],
                              usage=usage))
            if metrics is not None:
                metrics.observe(dispatcher, time.perf_counter() - t0, n_out)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.exception_handler(BadRequest)
    async def _bad(_, e: BadRequest):
        if metrics is not None:
            metrics.invalid.inc()
        return _error(400, str(e), e.param)

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        body = await parse(http, CompletionRequest)
        ids = completion_prompt(body)
        n = limit(ids, body.max_tokens, "prompt")
        req = Request(dispatcher.new_id(), tuple(ids), n, sampling(body), resume=bool(body.stream))
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await serve(req, bool(body.stream), chat=False, include_usage=usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        body = await parse(http, ChatCompletionRequest)
        ids = chat_prompt(body)
        n = limit(ids, body.max_completion_tokens or body.max_tokens, "messages")
        req = Request(dispatcher.new_id(), tuple(ids), n, sampling(body), resume=bool(body.stream))
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await serve(req, bool(body.stream), chat=True, include_usage=usage)

    @app.get("/v1/models")
    async def models():
        return ModelList(data=[ModelCard(id=model_name, max_model_len=max_model_len, owned_by="loadwise")])

    @app.get("/health")
    async def health():
        dep = dispatcher.deployment
        live = [r.name for r in (dep.replicas if dep else ()) if r.alive and r.name not in dispatcher.failed]
        if not live:
            return _error(503, "no live replica")
        return {"status": "ok", "replicas": live, "in_flight": dispatcher.open}

    @app.get("/metrics")
    async def prometheus():
        if metrics is None:
            return PlainTextResponse("", status_code=404)
        body, ctype = await metrics.render(dispatcher)
        return PlainTextResponse(body, media_type=ctype)

    return app
