"""The local servers from the command line (``./dev services ...``).

    python -m localenv up [--partitions N]   # start what is not running, apply schemas
    python -m localenv status                # real checks, quick timeouts
    python -m localenv down                  # stop the servers this package started
    python -m localenv reset                 # down + delete their data (jars stay cached)
    python -m localenv up --topology cluster # Redis Cluster, 3 Kafka brokers, 3 Cassandra nodes
                                             # (localenv/cluster_topology.py; same commands)
    python -m localenv up --topology regions # two regions, each a whole stack, MirrorMaker 2 a -> b
                                             # (localenv/regions.py; same commands)

Real servers on 127.0.0.1 (``localenv.services``); state, logs and pid files in ``.state/``.
A server already answering on a port (e.g. the machine's own PostgreSQL) is reused and
never stopped by ``down``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from localenv.host import HostError
from localenv.service import ServicesError
from localenv.services import down, reset, status, up
from settings import Settings, get_settings


def _quiet_client_logs() -> None:
    """Checks poll servers that are still booting: the drivers' retry noise is expected."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("cassandra", "aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "reset"])
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the topics created by `up` "
                             "(default: TL_TOPIC_PARTITIONS, 64)")
    parser.add_argument("--topology", choices=["single", "cluster", "regions"], default="single",
                        help="single: one node of each server (the default); cluster: every engine "
                             "clustered, state in .state/cluster (localenv/cluster_topology.py); regions: "
                             "two regions with their services, state in .state/regions (localenv/regions.py)")
    args = parser.parse_args(argv)
    if args.partitions is not None and args.partitions < 1:
        parser.error("--partitions must be >= 1")
    _quiet_client_logs()
    if args.topology == "cluster":
        from localenv.cluster_topology import ClusterTopology

        topology: SingleNode | ClusterTopology | RegionsTopology = ClusterTopology()
    elif args.topology == "regions":
        from localenv.regions import RegionsTopology

        topology = RegionsTopology()
    else:
        topology = SingleNode(get_settings())
    try:
        if args.command == "up":
            topology.up(args.partitions)
        elif args.command == "status":
            lines, ok = topology.status()
            print("\n".join(lines))
            return 0 if ok else 1
        elif args.command == "down":
            topology.down()
        else:
            topology.reset()
    except (ServicesError, HostError) as exc:
        print(f"\nFAILED\n{exc}", file=sys.stderr)
        return 1
    return 0


class SingleNode:
    """The default topology (``localenv.services``), with ``ClusterTopology``'s four commands."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def up(self, partitions: int | None) -> None:
        up(self.settings, partitions)

    def status(self) -> tuple[list[str], bool]:
        outcomes = status(self.settings)
        return [o.line() for o in outcomes], all(o.up for o in outcomes)

    def down(self) -> None:
        down(self.settings)

    def reset(self) -> None:
        reset(self.settings)


if __name__ == "__main__":
    sys.exit(main())
