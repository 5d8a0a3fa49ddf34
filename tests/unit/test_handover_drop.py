"""faust_handover defect 5: a message one agent took and another agent's queue dropped at a
rebalance no longer holds up ``wait_empty`` - and its offset is never marked done."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from weakref import WeakSet

from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlQueue

from streams.faust_handover import DropAwareFlowControl, HandoverSafeConsumer


class Consumer(HandoverSafeConsumer):
    """HandoverSafeConsumer's drop bookkeeping without a Kafka consumer behind it; the
    base class's ``ack`` (which marks an offset done) is recorded instead."""

    def __init__(self) -> None:  # noqa: D107 - no super().__init__: no app, no thread
        self._dropped = WeakSet()
        self._unacked_messages = WeakSet()
        self._waiting_for_ack = None
        self.offsets_done: list[int] = []

    def ack(self, message):  # the real override, with the base class's ack recorded
        if message in self._dropped:
            return HandoverSafeConsumer.ack(self, message)
        message.acked = True
        self._unacked_messages.discard(message)
        self.offsets_done.append(message.offset)
        return True


def message(offset: int, refcount: int, consumer: Consumer) -> ConsumerMessage:
    msg = ConsumerMessage("tweets", 0, offset, 0.0, 0, None, b"1", b"{}", None)
    msg.refcount = refcount
    msg.tracked = True
    consumer._unacked_messages.add(msg)
    return msg


def test_a_dropped_copy_stops_waiting_once_the_other_agent_acks_without_marking_the_offset():
    consumer = Consumer()
    msg = message(7, refcount=2, consumer=consumer)  # two agents read the topic
    consumer.on_copy_dropped(msg)  # the second agent's queue was cleared
    assert msg in consumer._unacked_messages and not msg.acked  # the first agent still holds it
    msg.ack(consumer)  # the first agent finishes its batch
    assert msg not in consumer._unacked_messages and msg.acked
    assert consumer.offsets_done == []  # never committed: the next owner reads it again


def test_a_dropped_copy_of_a_message_the_other_agent_already_acked_is_forgotten_at_once():
    consumer = Consumer()
    msg = message(8, refcount=2, consumer=consumer)
    msg.ack(consumer)  # first agent done: refcount 1, still waiting for the second
    assert msg in consumer._unacked_messages and consumer.offsets_done == []
    consumer.on_copy_dropped(msg)
    assert msg not in consumer._unacked_messages
    assert consumer.offsets_done == []


def test_a_message_nobody_dropped_is_acked_as_before():
    consumer = Consumer()
    msg = message(9, refcount=2, consumer=consumer)
    msg.ack(consumer)
    msg.ack(consumer)
    assert consumer.offsets_done == [9]


def test_clear_reports_only_copies_whose_message_another_agent_took():
    consumer = Consumer()
    dropped: list[int] = []
    consumer.on_copy_dropped = lambda m: dropped.append(m.offset)  # type: ignore[method-assign]

    async def run() -> None:
        flow = DropAwareFlowControl(SimpleNamespace(_consumer=consumer))
        queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        taken = message(1, refcount=2, consumer=consumer)  # the other agent took it
        untaken = message(2, refcount=2, consumer=consumer)
        untaken.tracked = False  # nobody took it: dropping every copy loses nothing
        for msg in (taken, untaken):
            queue.put_nowait(SimpleNamespace(message=msg))
        flow.clear()
        assert queue.empty()

    asyncio.run(run())
    assert dropped == [1]
