"""Weights from the Hugging Face hub through timm, failing fast and clearly when offline."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from torch import nn

from cilbench.core.errors import (
    WeightsUnavailableError,
)


def hub_model(tag: str, num_classes: int) -> nn.Module:
    """timm's model with pretrained weights; one clear error, fast, when they cannot be fetched.

    Weights not in the local cache need the hub: when it is unreachable (HF_HUB_OFFLINE set, or
    no connection within a few seconds) this fails at once instead of after the hub client's
    retries, and any download failure becomes one message saying how to get the weights.
    """
    import timm

    cached = _weights_cached(tag)
    problem = "" if cached else _hub_problem()
    if problem:
        raise WeightsUnavailableError(_weights_message(tag, problem))
    try:
        return timm.create_model(tag, pretrained=True, num_classes=num_classes)
    except Exception as error:  # the hub client's errors vary by version and transport
        if cached:
            raise
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise WeightsUnavailableError(_weights_message(tag, reason)) from error


def _weights_cached(tag: str) -> bool:
    """Whether timm would find the weights of `tag` in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    repo = cfg.hf_hub_id if cfg is not None else None
    if cfg is None or not repo:
        return False
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _hub_problem(timeout: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be reached now, or '' when it answers (or a proxy is set)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return ""  # the hub client goes through the proxy; a direct probe would say nothing
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as error:
        return f"{url.hostname} is unreachable ({error})"
    return ""


def _weights_message(tag: str, reason: str) -> str:
    return (
        f"Cannot download the weights of timm tag {tag!r}: {reason}. Pre-fetch them on a "
        f"machine with internet access: python -c \"import timm; timm.create_model('{tag}', "
        'pretrained=True)", then copy its Hugging Face cache (~/.cache/huggingface, or '
        "$HF_HOME) here and run with HF_HUB_OFFLINE=1; or save the weights to a file and use a "
        "backbone spec with weights='file:PATH' (see README, custom backbones)."
    )
