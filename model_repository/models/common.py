"""Helpers shared by the Python-backend models (importable only inside Triton's stub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils


def version_dir(args: dict[str, Any]) -> Path:
    """The model version folder holding the model's files."""
    return Path(args["model_repository"]) / args["model_version"]


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The config.pbtxt `parameters` as plain strings."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return {k: v["string_value"] for k, v in params.items()}


def invalid(message: str) -> Any:
    """An INVALID_ARGUMENT response: the request is refused, the model keeps serving."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str) -> Any:
    """An INTERNAL error response for failures that are the server's fault."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )


def input_array(request: Any, name: str) -> Any:
    """The numpy value of input `name` of `request`."""
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def optional_array(request: Any, name: str) -> Any:
    """The numpy value of optional input `name`, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
