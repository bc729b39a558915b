"""Run stock amqtt 0.12.1 (``amqtt.broker.Broker``, none of our overrides) on a port.

``python -m tests.protocol.stock_amqtt PORT [MAX_CONNECTIONS]``: the reference for
"fails on stock amqtt" in the protocol tests. Same listener and plugins as ours.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from amqtt.broker import Broker

from broker.server import amqtt_config


async def main(port: int, max_connections: int) -> None:
    config = amqtt_config("127.0.0.1", port)
    config["listeners"]["default"]["max_connections"] = max_connections
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else -1))
