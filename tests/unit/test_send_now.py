"""agents.outbox.send_now: a batch's last sends leave at once instead of after the linger."""
import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer

from agents.outbox import send_now


class Builder:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _topic(accumulator: object) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(producer=SimpleNamespace(_producer=SimpleNamespace(
        _message_accumulator=accumulator))))


async def test_closes_every_open_batch_and_wakes_the_sender():
    builders = [Builder(), Builder(), Builder()]
    waiter = asyncio.get_running_loop().create_future()
    acc = SimpleNamespace(_batches={"tp0": [SimpleNamespace(_builder=b) for b in builders[:2]],
                                    "tp1": [SimpleNamespace(_builder=builders[2])]},
                          _waiter_future=waiter)
    send_now(_topic(acc))
    assert all(b.closed for b in builders)
    assert waiter.done()
    send_now(_topic(acc))  # a woken sender is not woken twice (set_result would raise)


async def test_the_installed_aiokafka_has_the_internals_it_uses():
    # An aiokafka upgrade that renames them would make send_now a silent no-op (5 ms more
    # per batch): fail here instead. No broker is contacted (the producer is not started).
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=5)
    acc = producer._message_accumulator
    assert isinstance(acc._batches, dict)
    assert isinstance(acc._waiter_future, asyncio.Future)
    try:
        send_now(_topic(acc))
        assert acc._waiter_future.done()
    finally:
        await producer.stop()


def test_a_producer_without_them_is_left_alone():
    send_now(SimpleNamespace())
    send_now(_topic(SimpleNamespace()))
