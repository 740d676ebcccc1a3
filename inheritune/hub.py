"""The Hugging Face Hub, asked once per process whether it can be reached: offline commands fail at once, in one line,
instead of after minutes of retries."""

import functools
import sys
import urllib.request

HUB_PROBE_TIMEOUT = 2  # seconds to wait for the Hub's answer before calling it unreachable


@functools.cache
def hub_unreachable():
    """Why the Hugging Face Hub cannot be used now (HF_HUB_OFFLINE set, or the connection's error), else "". Then
    huggingface_hub, transformers and datasets go offline: what their caches lack fails at once, not after retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_TIMEOUT)
    except urllib.request.HTTPError:  # the Hub answered, if not with 200
        pass
    except OSError as e:  # no network, no DNS, a firewall
        constants.HF_HUB_OFFLINE = True  # what datasets reads when it is imported
        if "datasets" in sys.modules:  # imported before
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        return f"{constants.ENDPOINT} cannot be reached ({getattr(e, 'reason', e)})"
    return ""
