"""Write N raw transactions as an Arrow IPC stream with Polars (its own Arrow implementation,
not arrow-rs): a message for the Kafka source's Arrow format. Prints the amounts' exact sum.

Usage: polars_ipc.py OUT N
"""
import datetime, decimal, sys
import polars as pl
n = int(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc)
df = pl.DataFrame(
    {
        "transaction_id": [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, n + 1)],
        "customer_id": [i % 7 + 1 for i in range(n)],
        "merchant_id": [3] * n,
        "transaction_ts": [now] * n,
        "amount": [decimal.Decimal(i) / 100 + 1 for i in range(n)],
        "category": ["grocery"] * n,
        "channel": ["online"] * n,
        "status": ["approved"] * n,
    },
    schema_overrides={
        "amount": pl.Decimal(12, 2),
        "transaction_ts": pl.Datetime("us", "UTC"),
        "category": pl.Categorical,
    },
)
with open(sys.argv[1], "wb") as f:
    df.write_ipc_stream(f)
print(df["amount"].sum())
