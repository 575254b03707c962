"""The OpenAI-compatible front door: typing, plan-driven dispatch (policy, pure), the dispatcher and the HTTP app.

`serving.router.app` and `serving.router.server` import FastAPI, uvicorn and vLLM's protocol models inside their
functions; `import serving.router` loads none of them.
"""

from serving.router.dispatcher import Dispatcher, NoReplica, Overloaded, Request
from serving.router.policy import RoutingTable, choose, table_from_plan

__all__ = ["Dispatcher", "NoReplica", "Overloaded", "Request", "RoutingTable", "choose", "table_from_plan"]
