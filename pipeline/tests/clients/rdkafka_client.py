"""librdkafka (PyPI confluent-kafka), the standard Kafka client, as an independent producer and
consumer for pipeline/tests/it/kafka.rs. Prints one JSON object.

  rdkafka_client.py BOOTSTRAP TOPIC produce N   N transactions (2 partitions, batched) + 1 unreadable
  rdkafka_client.py BOOTSTRAP TOPIC consume     every message from the earliest offsets
"""
import datetime
import decimal
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "produce":
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
        f.result()
    # linger.ms: several messages per record batch, as producers under load send them.
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = int(sys.argv[4])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    total = decimal.Decimal(0)
    for i in range(n):
        amount = f"{1 + i % 997}.{i % 100:02d}"
        total += decimal.Decimal(amount)
        msg = {"transaction_id": str(uuid.UUID(int=i + 1, version=4)), "customer_id": 1 + i % 50,
               "merchant_id": 3, "transaction_ts": now, "amount": amount, "category": "grocery",
               "channel": "online", "status": "approved"}
        p.produce(topic, key=str(msg["customer_id"]), value=json.dumps(msg))
        if i % 1000 == 0:
            p.poll(0)
    p.produce(topic, key="x", value=b"not json at all")
    left = p.flush(30)
    print(json.dumps({"unsent": left, "sum": str(total), "library": __import__("confluent_kafka").libversion()[0]}))
else:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rdkafka-check",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    messages, ids, idle = 0, set(), 0
    while idle < 5:
        m = c.poll(1.0)
        if m is None or m.error():
            idle += 1
            continue
        messages += 1
        try:
            ids.add(json.loads(m.value())["transaction_id"])
        except Exception:
            pass
    print(json.dumps({"messages": messages, "distinct_ids": len(ids)}))
