"""The live web dashboard: an ASGI app that subscribes at the cloud and pushes aggregates to the page.

``aggregate`` (pure: folds state, stats and telemetry into 1 Hz frames), ``feed`` (the
MQTT subscriptions), ``app`` (Starlette: page, assets, server-sent events), ``server``
(the process: uvicorn, metrics, stats file), ``cmd`` (the ``edgemq dashboard`` command).
"""

from edgemq.dashboard.aggregate import Aggregator, BrokerView
from edgemq.dashboard.app import create_app

__all__ = ["Aggregator", "BrokerView", "create_app"]
