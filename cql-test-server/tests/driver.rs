//! The server through the real `scylla` driver, over a real socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cql_test_server::{Fault, FaultKind, Opcode, ServerConfig, TestServer};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlDate, CqlDecimal};
use tracing_subscriber::layer::SubscriberExt;

/// Driver log events at WARN or above, collected while a test runs.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() <= tracing::Level::WARN {
            struct V(String);
            impl tracing::field::Visit for V {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!("{}={v:?} ", f.name()));
                }
            }
            let mut v = V(format!(
                "{} {}: ",
                e.metadata().level(),
                e.metadata().target()
            ));
            e.record(&mut v);
            self.0.lock().unwrap().push(v.0);
        }
    }
}

const KS: &str = "CREATE KEYSPACE IF NOT EXISTS analytics WITH replication = \
                  {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";
const TABLE: &str = "CREATE TABLE IF NOT EXISTS analytics.customer_daily_aggregates (
  customer_id bigint, transaction_date date,
  total_amount decimal, transaction_count bigint, declined_count bigint,
  min_amount decimal, max_amount decimal,
  PRIMARY KEY ((customer_id), transaction_date)
) WITH CLUSTERING ORDER BY (transaction_date DESC)";
const INSERT: &str = "INSERT INTO analytics.customer_daily_aggregates \
  (customer_id, transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount) \
  VALUES (?, ?, ?, ?, ?, ?, ?)";
const SELECT: &str = "SELECT transaction_date, total_amount, transaction_count \
  FROM analytics.customer_daily_aggregates \
  WHERE customer_id = ? AND transaction_date >= ? AND transaction_date <= ?";

async fn start() -> (TestServer, Session) {
    let server = TestServer::start(ServerConfig::default()).await.unwrap();
    let session = SessionBuilder::new()
        .known_node(server.addr().to_string())
        .build()
        .await
        .unwrap();
    (server, session)
}

async fn with_schema() -> (TestServer, Session) {
    let (server, session) = start().await;
    session.query_unpaged(KS, &()).await.unwrap();
    session.query_unpaged(TABLE, &()).await.unwrap();
    (server, session)
}

fn day(n: u32) -> CqlDate {
    // 2024-01-01 is day 19723 after the epoch; dates are offset by 2^31.
    CqlDate((1u32 << 31) + 19_722 + n)
}

fn money(cents: i64) -> CqlDecimal {
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&cents.to_be_bytes(), 2)
}

fn cents(d: &CqlDecimal) -> i64 {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    assert_eq!(scale, 2);
    let mut buf = if bytes[0] & 0x80 != 0 {
        [0xFF; 8]
    } else {
        [0; 8]
    };
    buf[8 - bytes.len()..].copy_from_slice(bytes);
    i64::from_be_bytes(buf)
}

type Row = (CqlDate, CqlDecimal, i64);

async fn select(session: &Session, customer: i64, from: u32, to: u32) -> Vec<Row> {
    let mut select = session.prepare(SELECT).await.unwrap();
    select.set_page_size(3);
    session
        .execute_iter(select, (customer, day(from), day(to)))
        .await
        .unwrap()
        .rows_stream::<Row>()
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_default_session_connects_without_driver_warnings() {
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let (server, session) = with_schema().await;
    let mut insert = session.prepare(INSERT).await.unwrap();
    insert.set_is_idempotent(true);
    session
        .execute_unpaged(
            &insert,
            (
                1i64,
                day(1),
                money(1050),
                2i64,
                0i64,
                money(50),
                money(1000),
            ),
        )
        .await
        .unwrap();
    // The driver saw the schema (system_schema.* answered with the types it expects).
    session.refresh_metadata().await.unwrap();
    let state = session.get_cluster_state();
    let ks = state.get_keyspace("analytics").expect("keyspace metadata");
    let table = &ks.tables["customer_daily_aggregates"];
    assert_eq!(table.partition_key, ["customer_id"]);
    assert_eq!(table.clustering_key, ["transaction_date"]);
    assert_eq!(state.get_nodes_info().len(), 1);
    drop(session);
    let w = warnings.0.lock().unwrap();
    // The one warning ScyllaDB 6.2 itself sends: the keyspace was made with tablets
    // (`create_keyspace_statement.cc`), which the driver logs. Nothing else.
    let unexpected: Vec<&String> = w
        .iter()
        .filter(|w| !w.contains("will be replicated using Tablets"))
        .collect();
    assert!(unexpected.is_empty(), "driver warnings: {w:#?}");
    // The request log shows the driver's handshake and our statements.
    let ops: Vec<Opcode> = server.requests().iter().map(|r| r.opcode).collect();
    for op in [
        Opcode::Options,
        Opcode::Startup,
        Opcode::Register,
        Opcode::Prepare,
        Opcode::Execute,
    ] {
        assert!(ops.contains(&op), "{op:?} missing from {ops:?}");
    }
    let texts: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.statement.clone())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("FROM system.local")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("FROM system_schema.columns")),
        "{texts:#?}"
    );
    let exec = server
        .requests()
        .into_iter()
        .find(|r| r.opcode == Opcode::Execute && r.statement.as_deref() == Some(INSERT))
        .expect("the INSERT was executed as a prepared statement");
    assert_eq!(exec.values, 7);
    assert_eq!(exec.fault, None);
}

#[tokio::test]
async fn insert_batch_upsert_and_paged_range_select() {
    let (server, session) = with_schema().await;
    let insert = session.prepare(INSERT).await.unwrap();
    for d in 1..=10u32 {
        session
            .execute_unpaged(
                &insert,
                (
                    42i64,
                    day(d),
                    money(d as i64 * 100),
                    d as i64,
                    0i64,
                    money(1),
                    money(99),
                ),
            )
            .await
            .unwrap();
    }
    // An unlogged single-partition batch.
    let mut batch = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for d in 1..=3u32 {
        batch.append_statement(insert.clone());
        values.push((7i64, day(d), money(-5), 1i64, 1i64, money(-5), money(-5)));
    }
    session.batch(&batch, values).await.unwrap();
    assert_eq!(
        server.row_count("analytics", "customer_daily_aggregates"),
        Some(13)
    );
    // Upsert: same key, new values, no new row.
    session
        .execute_unpaged(
            &insert,
            (
                42i64,
                day(5),
                money(123_456_789),
                77i64,
                0i64,
                money(1),
                money(99),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        server.row_count("analytics", "customer_daily_aggregates"),
        Some(13)
    );

    // Days 3..=8, newest first (DESC clustering), fetched 3 rows per page.
    let rows = select(&session, 42, 3, 8).await;
    let days: Vec<u32> = rows.iter().map(|r| r.0.0 - (1 << 31) - 19_722).collect();
    assert_eq!(days, [8, 7, 6, 5, 4, 3]);
    assert_eq!(cents(&rows[3].1), 123_456_789);
    assert_eq!(rows[3].2, 77);
    assert!(select(&session, 99, 1, 10).await.is_empty());
    assert_eq!(cents(&select(&session, 7, 1, 1).await[0].1), -5);

    // Single pages by hand: the paging state moves on and ends.
    let mut select = session.prepare(SELECT).await.unwrap();
    select.set_page_size(4);
    let (first, next) = session
        .execute_single_page(&select, (42i64, day(1), day(10)), PagingState::start())
        .await
        .unwrap();
    assert_eq!(first.into_rows_result().unwrap().rows_num(), 4);
    let PagingStateResponse::HasMorePages { state } = next else {
        panic!("expected more pages")
    };
    let (second, _) = session
        .execute_single_page(&select, (42i64, day(1), day(10)), state)
        .await
        .unwrap();
    let second: Vec<Row> = second
        .into_rows_result()
        .unwrap()
        .rows::<Row>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(second[0].0, day(6));
}

fn db_error(e: &ExecutionError) -> Option<&DbError> {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => Some(db),
        _ => None,
    }
}

#[tokio::test]
async fn each_injected_error_reaches_the_caller_as_that_error() {
    let (server, session) = with_schema().await;
    let mut insert = session.prepare(INSERT).await.unwrap();
    insert.set_is_idempotent(true);
    let values = (1i64, day(1), money(1), 1i64, 0i64, money(1), money(1));
    for (kind, check) in [
        (
            FaultKind::Overloaded,
            (|e: &DbError| matches!(e, DbError::Overloaded)) as fn(&DbError) -> bool,
        ),
        (FaultKind::WriteTimeout, |e| {
            matches!(e, DbError::WriteTimeout { .. })
        }),
        (FaultKind::Unavailable, |e| {
            matches!(
                e,
                DbError::Unavailable {
                    required: 1,
                    alive: 0,
                    ..
                }
            )
        }),
        (FaultKind::ServerError, |e| {
            matches!(e, DbError::ServerError)
        }),
    ] {
        server.clear_faults();
        server.inject(Fault::on_statement("INSERT INTO analytics", kind.clone()).times(u64::MAX));
        let err = session
            .execute_unpaged(&insert, values.clone())
            .await
            .unwrap_err();
        let db = db_error(&err).unwrap_or_else(|| panic!("{kind:?}: {err:?}"));
        assert!(check(db), "{kind:?} gave {db:?}");
    }
    server.clear_faults();
    // A read timeout on SELECT.
    server.inject(
        Fault::on_statement("SELECT transaction_date", FaultKind::ReadTimeout).times(u64::MAX),
    );
    let select = session.prepare(SELECT).await.unwrap();
    let err = session
        .execute_unpaged(&select, (1i64, day(1), day(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::ReadTimeout { .. })),
        "{err:?}"
    );
    server.clear_faults();

    // `times` bounds a fault: two overloads, then the write goes through.
    server.inject(Fault::on_statement("INSERT INTO analytics", FaultKind::Overloaded).times(2));
    assert!(
        session
            .execute_unpaged(&insert, values.clone())
            .await
            .is_err()
    );
    assert!(
        session
            .execute_unpaged(&insert, values.clone())
            .await
            .is_err()
    );
    session
        .execute_unpaged(&insert, values.clone())
        .await
        .unwrap();
    assert_eq!(server.faults_hit(), 2);
    let logged: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .collect();
    assert!(
        logged
            .iter()
            .all(|r| r.opcode == Opcode::Execute || r.opcode == Opcode::Query)
    );
}

#[tokio::test]
async fn a_delay_past_the_request_timeout_is_a_client_timeout() {
    let (server, session) = with_schema().await;
    let mut insert = session.prepare(INSERT).await.unwrap();
    insert.set_request_timeout(Some(Duration::from_millis(100)));
    server.inject(Fault::on_statement(
        "INSERT",
        FaultKind::Delay(Duration::from_millis(600)),
    ));
    let values = (1i64, day(1), money(1), 1i64, 0i64, money(1), money(1));
    let err = session
        .execute_unpaged(&insert, values.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutionError::RequestTimeout(_)), "{err:?}");
    // Delayed, not lost: the server still applies it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.row_count("analytics", "customer_daily_aggregates"),
        Some(1)
    );
}

#[tokio::test]
async fn a_dropped_connection_fails_the_request_and_the_driver_reconnects() {
    let (server, session) = with_schema().await;
    let insert = session.prepare(INSERT).await.unwrap();
    let before = server.connections_accepted();
    server.inject(Fault::on_statement("INSERT", FaultKind::DropConnection));
    let values = (1i64, day(1), money(1), 1i64, 0i64, money(1), money(1));
    let err = session
        .execute_unpaged(&insert, values.clone())
        .await
        .unwrap_err();
    assert!(
        db_error(&err).is_none(),
        "a broken connection, not a server error: {err:?}"
    );
    // The pool refills in the background; the same session works again.
    let mut ok = false;
    for _ in 0..50 {
        if session
            .execute_unpaged(&insert, values.clone())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no reconnect");
    assert!(server.connections_accepted() > before);
    assert_eq!(
        server.row_count("analytics", "customer_daily_aggregates"),
        Some(1)
    );
}

#[tokio::test]
async fn unknown_tables_and_unsupported_statements_fail_loudly() {
    let (_server, session) = with_schema().await;
    let err = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.no_such_table", &())
        .await
        .unwrap_err();
    assert!(matches!(db_error(&err), Some(DbError::Invalid)), "{err:?}");
    let err = session
        .query_unpaged(
            "ALTER TABLE analytics.customer_daily_aggregates ADD note text",
            &(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not support `ALTER TABLE analytics.customer_daily_aggregates`"),
        "{msg}"
    );
    let err = session
        .query_unpaged("UPDATE analytics.customer_daily_aggregates USING TTL 60 SET transaction_count = 1 WHERE customer_id = 1", &())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("USING TTL is not supported"),
        "{err}"
    );
    let err = session
        .query_unpaged("SELECT * FROM analytics.nope", &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unconfigured table nope"), "{err}");
}

#[tokio::test]
async fn credentials_are_checked() {
    let server = TestServer::start(ServerConfig {
        credentials: Some(("loader".into(), "s3cret".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let wrong = SessionBuilder::new()
        .known_node(server.addr().to_string())
        .user("loader", "wrong")
        .build()
        .await;
    let msg = match wrong {
        Ok(_) => panic!("a wrong password must fail"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("incorrect"), "{msg}");
    SessionBuilder::new()
        .known_node(server.addr().to_string())
        .user("loader", "s3cret")
        .build()
        .await
        .expect("right password connects");
}
