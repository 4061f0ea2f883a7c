"""An interoperability client no one here wrote the Kafka side of: confluent-kafka (librdkafka's
Python binding) with classes protoc generated from proto/horizon/v1/events.proto.

It publishes three valid trades for one scenario symbol (two in the 1-minute bar starting at
--start, one in the next minute, which closes that bar) and one deliberately bad record (a
MARKET_DATA_RECEIVED envelope whose payload is not a MarketData), then reads market.bars and
deadletter back from the beginning, decoding them with the generated classes, until it finds the
closed bar of its trades and the dead letter of its bad record. Prints one JSON object; exits 1 on
timeout.

usage: client.py BOOTSTRAP GEN_DIR [--symbol BTCUSDT] [--start 2024-05-01T00:00:00Z] [--timeout 120]
"""

import argparse
import datetime as dt
import json
import sys
import time
import uuid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("gen")
    ap.add_argument("--symbol", default="BTCUSDT")
    ap.add_argument("--exchange", default="SIM")
    ap.add_argument("--start", default="2024-05-01T00:00:00Z")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    sys.path.insert(0, args.gen)
    from horizon.v1 import events_pb2 as pb
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
    from google.protobuf.timestamp_pb2 import Timestamp

    start = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    run = uuid.uuid4().hex[:12]

    # Kafka's Java default partitioner is murmur2 of the key; librdkafka's default is crc32.
    # The platform partitions by murmur2 of the symbol, like Java clients.
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    delivered = {}

    def report(err, msg):
        if err is not None:
            raise SystemExit(f"delivery failed: {err}")
        delivered[msg.key().decode() if msg.key() else None, msg.value()] = (msg.partition(), msg.offset())

    def ts(seconds):
        t = Timestamp()
        t.FromDatetime(start + dt.timedelta(seconds=seconds))
        return t

    # (offset seconds, price units at scale 1, quantity units at scale 4, side)
    trades = [(5, 600001, 20, pb.BUY), (35, 600123, 15, pb.SELL), (65, 600050, 10, pb.BUY)]
    sent_ids = []
    for n, (sec, price, qty, side) in enumerate(trades):
        trade = pb.Trade(
            symbol=args.symbol,
            exchange=args.exchange,
            trade_id=f"py-{run}-{n}",
            price=pb.Decimal(units=price, scale=1),
            quantity=pb.Decimal(units=qty, scale=4),
            aggressor_side=side,
            ts_exchange=ts(sec),
        )
        # schema_version names the shapes of the classes in use: events.proto is the current
        # version (2). Trades are the same in v1 and v2; a reader upcasts older versions.
        env = pb.DomainEvent(
            event_id=f"py-{run}-trade-{n}",
            aggregate_id=args.symbol,
            type=pb.MARKET_DATA_RECEIVED,
            timestamp=ts(sec),
            payload=pb.MarketData(trade=trade).SerializeToString(),
            metadata={"producer": "python-interop", "schema_version": "2", "correlation_id": f"py-{run}-trade-{n}"},
        )
        sent_ids.append(env.event_id)
        producer.produce("market.feed", key=args.symbol.encode(), value=env.SerializeToString(), on_delivery=report)
    bad = pb.DomainEvent(
        event_id=f"py-{run}-bad",
        aggregate_id=args.symbol,
        type=pb.MARKET_DATA_RECEIVED,
        timestamp=ts(66),
        payload=b"\xff\xfe not a MarketData",
        metadata={"producer": "python-interop"},
    ).SerializeToString()
    producer.produce("market.feed", key=args.symbol.encode(), value=bad, on_delivery=report)
    if producer.flush(30) != 0:
        raise SystemExit("records not acknowledged within 30 s")
    bad_partition, bad_offset = delivered[(args.symbol, bad)]

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"py-interop-{run}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    meta = consumer.list_topics(timeout=30)
    assignment = [
        TopicPartition(topic, p, OFFSET_BEGINNING) for topic in ("market.bars", "deadletter") for p in meta.topics[topic].partitions
    ]
    consumer.assign(assignment)
    bar_start = int(start.timestamp())
    found_bar = None
    found_dead = None
    deadline = time.time() + args.timeout
    while (found_bar is None or found_dead is None) and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise SystemExit(f"consume error: {msg.error()}")
        if msg.topic() == "market.bars":
            env = pb.DomainEvent.FromString(msg.value())
            md = pb.MarketData.FromString(env.payload)
            if env.type != pb.MARKET_DATA_RECEIVED or md.WhichOneof("data") != "bar":
                continue
            b = md.bar
            if b.symbol == args.symbol and b.interval_ms == 60000 and b.start.seconds == bar_start:
                found_bar = {
                    "event_id": env.event_id,
                    "key": msg.key().decode(),
                    "causation_id": env.metadata.get("causation_id", ""),
                    "producer": env.metadata.get("producer", ""),
                    "symbol": b.symbol,
                    "exchange": b.exchange,
                    "interval_ms": b.interval_ms,
                    "start": b.start.ToJsonString(),
                    "open": [b.open.units, b.open.scale],
                    "high": [b.high.units, b.high.scale],
                    "low": [b.low.units, b.low.scale],
                    "close": [b.close.units, b.close.scale],
                    "volume": [b.volume.units, b.volume.scale],
                    "trade_count": b.trade_count,
                    "seq": b.seq,
                }
        else:
            d = pb.DeadLetter.FromString(msg.value())
            if d.original == bad:
                found_dead = {
                    "reason": d.reason,
                    "source_topic": d.source_topic,
                    "source_partition": d.source_partition,
                    "source_offset": d.source_offset,
                    "service": d.service,
                    "event_id": d.event_id,
                    "original_matches": True,
                }
    consumer.close()
    out = {
        "sent_event_ids": sent_ids,
        "bad_event_id": f"py-{run}-bad",
        "bad_partition": bad_partition,
        "bad_offset": bad_offset,
        "bar": found_bar,
        "dead_letter": found_dead,
    }
    print(json.dumps(out))
    if found_bar is None or found_dead is None:
        print(f"timed out after {args.timeout} s: bar {'found' if found_bar else 'missing'}, dead letter {'found' if found_dead else 'missing'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
