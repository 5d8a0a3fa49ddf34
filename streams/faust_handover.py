"""Safe hand-over of stream partitions after a rebalance (workarounds for faust-streaming 0.15.3).

After every rebalance a Faust worker pauses all its partitions, recovers its
tables from the changelogs, then ``Recovery.on_recovery_completed`` seeks the
stream partitions to the group's committed offsets and resumes them. Three
defects in that hand-over lose or strand messages when workers come and go
(tests/integration/test_scale_out.py, a SIGKILL and a join):

1. ``on_recovery_completed`` resumes the stream partitions *before* it seeks
   them (``consumer.resume_partitions(...)``, then ``await
   consumer.perform_seek()``), with the fetcher and flow control already
   running since the changelog phase. Messages fetched during that await reach
   the agents, then ``perform_seek`` rewinds the consumer's read offsets under
   them: the re-fetched copies are dropped ("DROPPED MESSAGE ROFF") while the
   first copies' acks are lost in the rewind, so the partition's committed
   offset never advances again (consumer lag never reaches zero). The order
   was fixed once upstream (faust-streaming PR #217, issue #216) and came back.
   ``SeekThenResumeRecovery`` seeks first, then resumes.

2. The fetcher passes the consumer's *live* set of active partitions to the
   consumer thread. Around a rebalance that set becomes empty while a fetch
   waits (all partitions paused), and aiokafka's
   ``Fetcher.fetched_records(partitions)`` treats an empty set as "all
   partitions": it returns the buffered records of every partition and moves
   their positions past them; Faust then discards those records as not active.
   ``HandoverSafeConsumer._getmany`` fetches with a snapshot of the set, and
   fetches nothing when it is empty.

3. ``perform_seek`` only moves partitions that have a committed offset
   (aiokafka's ``seek_to_committed`` skips ``None`` and ``0``). A partition
   whose previous owner died before its first commit keeps a position that
   may already be past records nobody processed.
   ``HandoverSafeConsumer.perform_seek`` moves those to their earliest offset,
   which is what ``consumer_auto_offset_reset="earliest"`` promises.

4. A table checks once that its changelog has as many partitions as its source
   topic, from the metadata snapshot taken when the group was joined. A
   changelog the worker had just created (a new app id, two workers starting
   together) can be in that snapshot with *0* partitions (no leader elected
   yet); the first event on a backlog then raised ``PartitionsMismatch`` (0 vs
   4), which stops the worker (exit 78). ``HandoverSafeConsumer.topic_partitions``
   reports 0 as unknown, as faust already treats a topic missing from the
   snapshot; a real mismatch is still refused.

5. A rebalance could wedge a worker for good. A message of a topic that two
   agents read (tweets and follows: the fanout and the projection) is put in
   both agents' queues; ``Message.refcount`` is 2 and its offset is committed
   when both streams have acked it. When partitions are revoked, Faust clears
   the agents' queues (``flow_control.clear()``) and then waits in
   ``Consumer.wait_empty`` until every message an agent has taken is acked.
   A message one agent had already taken and the other still had queued was
   cleared from the second queue only: its refcount never reaches 0, so
   ``wait_empty`` waited forever (faust-streaming issue 133), the member missed
   the rebalance and the group went on without it. Measured with probes on
   every partition: one of the first two rebalances under load wedged a worker.
   ``DropAwareFlowControl.clear`` tells the consumer which copies it drops;
   such a message stops holding up ``wait_empty`` once the agents that took
   it have acked, and its offset is *not* marked done (an agent never saw it):
   the partition's next owner reads it again from the committed offset.

6. After every rebalance each RocksDB table "revokes" the partitions it lost
   and runs a full ``gc.collect()`` (its handles are closed by the collector),
   even when it lost none: five tables, about 0.5 s each on this machine, so
   a worker that only *gained* partitions (taking over a dead worker's) spent
   2.5 s collecting garbage before it could start recovery.
   ``QuickRevokeRocksDBStore`` (registered as the ``rocksdb://`` store) skips
   the collection when the table lost nothing.
"""
from __future__ import annotations

import asyncio
from typing import Any, List, Mapping, Optional, Set, cast
from weakref import WeakSet

import faust
from faust import stores as faust_stores
from faust.stores import rocksdb as rocksdb_store
from faust.tables import TableManager
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent
from faust.tables.recovery import Recovery
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP


class HandoverSafeConsumer(aiokafka_driver.Consumer):
    """The aiokafka consumer, with defects 2 and 3 above fixed."""

    #: The partition sets of the fetches in progress (a fetch moves positions).
    _fetching: List[Set[TP]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetching = []
        #: Messages with a copy that a queue clear dropped before its agent took it
        #: (defect 5): never marked done, waited for only while an agent holds one.
        self._dropped: WeakSet[Any] = WeakSet()

    def on_copy_dropped(self, message: Any) -> None:
        """One agent will never see ``message``: it was cleared from its queue after
        another agent had taken its own copy (defect 5)."""
        with ack_lock:
            self._dropped.add(message)
            if not message.acked and message.decref() == 0:  # the others have acked it
                self._forget(message)

    def ack(self, message: Any) -> bool:
        if message in self._dropped:  # the last agent that took it is done with it
            with ack_lock:
                self._forget(message)
            return False
        return super().ack(message)

    def _forget(self, message: Any) -> None:
        """Stop waiting for ``message`` without marking its offset done."""
        message.acked = True
        self._unacked_messages.discard(message)
        notify(self._waiting_for_ack)

    async def _getmany(self, active_partitions: Optional[Set[TP]], timeout: float) -> Any:
        if active_partitions is None:  # client-only app
            return await super()._getmany(active_partitions, timeout)
        # A copy: pausing partitions while this fetch waits must not turn it
        # into a fetch of every partition (an empty set means "all").
        partitions = set(active_partitions)
        if not partitions:
            return {}
        self._fetching.append(partitions)
        try:
            return await super()._getmany(partitions, timeout)
        finally:
            self._fetching.remove(partitions)

    def topic_partitions(self, topic: str) -> Optional[int]:
        """Partitions of ``topic`` in the group's metadata snapshot; None when unknown,
        including 0 (a topic still being created), never a count to compare (defect 4)."""
        return super().topic_partitions(topic) or None

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset, or to its earliest one if none."""
        # A fetch started before the partitions were paused may still move
        # their positions (records Faust then drops): seek after it returns.
        streams = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
        while any(partitions & streams for partitions in self._fetching):
            await asyncio.sleep(0.05)
        committed: Mapping[Any, Optional[int]] = await self.seek_to_committed()
        unpositioned = [
            ensure_TP(tp) for tp, offset in committed.items()
            if not offset and not self._is_changelog_tp(ensure_TP(tp))
        ]
        if unpositioned:
            earliest = await self.earliest_offsets(*unpositioned)
            await self.seek_wait({tp: earliest.get(tp) or 0 for tp in unpositioned})
        # The bookkeeping of Consumer.perform_seek: where reading resumes, and
        # which offsets count as committed (acks below them are ignored).
        self._read_offset.update(
            {ensure_TP(tp): offset if offset else None for tp, offset in committed.items()}
        )
        self._committed_offset.update(
            {ensure_TP(tp): offset if offset else None for tp, offset in committed.items() if offset is not None}
        )


class QuickRevokeRocksDBStore(rocksdb_store.Store):
    """Faust's RocksDB store; no ``gc.collect()`` when a rebalance revoked nothing of it (defect 6)."""

    def revoke_partitions(self, table: Any, tps: Set[TP]) -> None:
        if any(tp.topic in table.changelog_topic.topics for tp in tps):
            super().revoke_partitions(table, tps)


# ``store="rocksdb://"`` (TL_FAUST_STORE) now builds QuickRevokeRocksDBStore.
faust_stores.STORES.aliases["rocksdb"] = f"{__name__}:QuickRevokeRocksDBStore"


class HandoverSafeTransport(aiokafka_driver.Transport):
    Consumer = HandoverSafeConsumer


class SeekThenResumeRecovery(Recovery):
    """Faust's ``Recovery``; stream partitions are resumed only after the seek (defect 1)."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s", self.app.consumer_generation_id, generation_id
            )
            return
        if assignment:
            # Still paused: nothing is fetched for the stream partitions until
            # they point at the committed offsets.
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await cast(Any, self.app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class SeekThenResumeTableManager(TableManager):
    """``App(TableManager=...)``: the table manager whose recovery is ``SeekThenResumeRecovery``."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class DropAwareFlowControl(FlowControlEvent):
    """The app's flow control; ``clear()`` reports the copies of messages it drops that
    another agent has already taken (defect 5)."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._app = app

    def clear(self) -> None:
        consumer = self._app._consumer  # None before the consumer exists
        if consumer is not None and hasattr(consumer, "on_copy_dropped"):
            for queue in self._queues:
                for item in list(getattr(queue, "_queue", ())):
                    message = getattr(item, "message", None)
                    # ``tracked``: a stream took it (it is tracked when taken, not when queued).
                    if message is not None and message.tracked and not message.acked:
                        consumer.on_copy_dropped(message)
        super().clear()


class HandoverSafeApp(faust.App):
    """``faust.App`` whose consumer transport is ``HandoverSafeTransport`` and whose flow
    control is ``DropAwareFlowControl``."""

    def _new_transport(self) -> Any:
        return HandoverSafeTransport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return DropAwareFlowControl(self, loop=self.loop)

