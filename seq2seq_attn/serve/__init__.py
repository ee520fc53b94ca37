"""``attn-serve``: the ASGI application (FastAPI), the dynamic batcher that owns the model,
the request schema and limits, and the attention explorer page (``static/``).

:func:`create_app` builds the application around a
:class:`~seq2seq_attn.serve.batcher.DynamicBatcher`; :func:`serve` runs it with uvicorn.
"""

from .app import ServeSettings, create_app
from .model_info import describe_model
from .schema import ServeLimits
from .server import is_loopback, serve

__all__ = ["ServeLimits", "ServeSettings", "create_app", "describe_model", "is_loopback", "serve"]
