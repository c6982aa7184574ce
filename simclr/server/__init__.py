"""Serving: start and stop Triton Inference Server on a model repository."""

from simclr.server.launcher import ServerError, ServerOptions, TritonServer, find_triton, model_names

__all__ = ["ServerError", "ServerOptions", "TritonServer", "find_triton", "model_names"]
