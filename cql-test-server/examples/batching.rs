//! Does grouping a customer's rows into unlogged single-partition batches help the load?
//! Writes the same rows (customers x days of the serving table) two ways through the real
//! driver, with the same number of rows in flight, and prints rows/s for each:
//! one prepared INSERT per row, and one UNLOGGED BATCH per customer (all its days).
//!
//! `cargo run --release -p cql-test-server --example batching [URI] [customers] [days]`
//! Without URI it starts the in-memory test server, so the numbers then measure the client and
//! the protocol round trips, not ScyllaDB's write path.

use std::time::Instant;

use cql_test_server::{ServerConfig, TestServer};
use futures::StreamExt;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlDate, CqlDecimal};

const IN_FLIGHT_ROWS: usize = 256;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server;
    let uri = match args.get(1).filter(|a| a.contains(':')) {
        Some(u) => u.clone(),
        None => {
            server = TestServer::start(ServerConfig {
                log_requests: false,
                ..Default::default()
            })
            .await
            .unwrap();
            server.addr().to_string()
        }
    };
    let customers: i64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let days: u32 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(30);
    let session = SessionBuilder::new()
        .known_node(&uri)
        .build()
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS batching WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS batching.t (customer_id bigint, transaction_date date, total_amount decimal, \
             transaction_count bigint, PRIMARY KEY ((customer_id), transaction_date))",
            (),
        )
        .await
        .unwrap();
    let mut insert = session
        .prepare("INSERT INTO batching.t (customer_id, transaction_date, total_amount, transaction_count) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    insert.set_is_idempotent(true);
    let row = |c: i64, d: u32| {
        (
            c,
            CqlDate((1 << 31) + 19_723 + d),
            CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                &(c * 100 + d as i64).to_be_bytes(),
                2,
            ),
            d as i64,
        )
    };
    let rows = customers as u64 * days as u64;

    let t = Instant::now();
    let (s, ins) = (&session, &insert);
    futures::stream::iter((0..customers).flat_map(|c| (0..days).map(move |d| (c, d))))
        .map(|(c, d)| async move { s.execute_unpaged(ins, row(c, d)).await.unwrap() })
        .buffer_unordered(IN_FLIGHT_ROWS)
        .for_each(|_| async {})
        .await;
    let single = rows as f64 / t.elapsed().as_secs_f64();

    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..days {
        batch.append_statement(insert.clone());
    }
    batch.set_is_idempotent(true);
    let t = Instant::now();
    let b = &batch;
    futures::stream::iter(0..customers)
        .map(|c| async move {
            let values: Vec<_> = (0..days).map(|d| row(c, d)).collect();
            s.batch(b, values).await.unwrap()
        })
        .buffer_unordered((IN_FLIGHT_ROWS / days as usize).max(1))
        .for_each(|_| async {})
        .await;
    let batched = rows as f64 / t.elapsed().as_secs_f64();
    println!(
        "{rows} rows ({customers} customers x {days} days) at {uri}: single-row INSERTs {single:.0} rows/s; \
         one UNLOGGED BATCH per customer {batched:.0} rows/s ({:.2}x)",
        batched / single
    );
}
