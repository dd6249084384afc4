//! An in-memory CQL native-protocol (v4) server for tests, with fault injection.
//!
//! **It is not a database.** One node, rows in memory, no replication, no shard awareness, no
//! TTL, no compression. It answers what the real `scylla` driver sends on connect (OPTIONS,
//! STARTUP, REGISTER, its `system.*` / `system_schema.*` queries) and what the pipeline runs
//! (CREATE KEYSPACE/TABLE, USE, PREPARE/EXECUTE, BATCH, INSERT/UPDATE/DELETE with `USING
//! TIMESTAMP`, lightweight transactions (`IF NOT EXISTS`, `IF EXISTS`, `IF col op value`),
//! SELECT by partition key with a clustering range and paging, SELECT DISTINCT of the
//! partition key), so the load stage can be tested through the real driver over a real
//! socket. Writes reconcile as Cassandra's do: per cell, the later timestamp wins whatever the
//! arrival order, and row and partition deletions are kept so an older write that arrives
//! later stays deleted. Lightweight transactions are atomic because the store is one lock (no
//! Paxos). Unsupported statements and unknown system tables are errors that name them.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use cql_test_server::{Fault, FaultKind, ServerConfig, TestServer};
//! let server = TestServer::start(ServerConfig::default()).await?;
//! server.inject(Fault::on_statement("INSERT", FaultKind::Overloaded).times(3));
//! println!("CQL on {}", server.addr());
//! # Ok(()) }
//! ```

mod cql;
mod engine;
mod frame;
mod profile;
mod types;

pub use profile::Profile;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use engine::{CqlError, Exec, Outcome, PreparedMeta, Store, code};
pub use frame::Opcode;
use frame::{HEADER_LEN, Reader, Value, Writer};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free one. The address is what `system.local` reports
    /// as `rpc_address`, so the driver connects back to the same place.
    pub addr: SocketAddr,
    /// Require `PasswordAuthenticator` login with these credentials.
    pub credentials: Option<(String, String)>,
    /// Keep a log of every request (opcode, statement, values). Counters are always kept.
    pub log_requests: bool,
    /// The server to behave like (default: the compose file's, ScyllaDB 6.2).
    pub profile: Profile,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("valid address"),
            credentials: None,
            log_requests: true,
            profile: Profile::default(),
        }
    }
}

/// What an injected fault does to a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// `Overloaded` error (0x1001).
    Overloaded,
    /// `WriteTimeout` error (0x1100), write type SIMPLE (BATCH for batches).
    WriteTimeout,
    /// `ReadTimeout` error (0x1200), no data present.
    ReadTimeout,
    /// `Unavailable` error (0x1000): 1 replica required, 0 alive.
    Unavailable,
    /// `ServerError` (0x0000).
    ServerError,
    /// Answer normally, after this long.
    Delay(Duration),
    /// Close the connection without answering.
    DropConnection,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only these opcodes (empty: QUERY, EXECUTE and BATCH).
    pub opcodes: Vec<Opcode>,
    /// Only requests whose statement text contains this (case-insensitive).
    pub statement_contains: Option<String>,
    pub kind: FaultKind,
    /// Let this many matching requests through first.
    pub skip: u64,
    /// Then hit this many (u64::MAX: every one).
    pub times: u64,
}

impl Fault {
    /// A fault for QUERY/EXECUTE/BATCH requests whose statement contains `text`, once.
    pub fn on_statement(text: &str, kind: FaultKind) -> Self {
        Self {
            opcodes: Vec::new(),
            statement_contains: Some(text.to_ascii_lowercase()),
            kind,
            skip: 0,
            times: 1,
        }
    }

    /// A fault for every request with this opcode, once.
    pub fn on_opcode(op: Opcode, kind: FaultKind) -> Self {
        Self {
            opcodes: vec![op],
            statement_contains: None,
            kind,
            skip: 0,
            times: 1,
        }
    }

    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    fn matches(&self, op: Opcode, statement: Option<&str>) -> bool {
        let op_ok = if self.opcodes.is_empty() {
            matches!(op, Opcode::Query | Opcode::Execute | Opcode::Batch)
        } else {
            self.opcodes.contains(&op)
        };
        op_ok
            && match &self.statement_contains {
                None => true,
                Some(s) => statement.is_some_and(|t| t.to_ascii_lowercase().contains(s)),
            }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub connection: u64,
    pub opcode: Opcode,
    /// Query text (for EXECUTE the prepared statement's text; for BATCH the statements joined
    /// by "; ").
    pub statement: Option<String>,
    /// Bound values (for BATCH, the number of statements).
    pub values: usize,
    pub consistency: Option<u16>,
    /// The fault applied, if any.
    pub fault: Option<FaultKind>,
}

struct Prepared {
    text: String,
    parsed: Arc<cql::Parsed>,
}

struct ActiveFault {
    fault: Fault,
    seen: u64,
    hit: u64,
}

struct Shared {
    store: Mutex<Store>,
    prepared: Mutex<HashMap<Vec<u8>, Arc<Prepared>>>,
    faults: Mutex<Vec<ActiveFault>>,
    log: Mutex<Vec<LoggedRequest>>,
    counts: Mutex<HashMap<Opcode, u64>>,
    connections: AtomicU64,
    /// Fault rules added (a fast check on the hot path).
    fault_rules: AtomicU64,
    config: ServerConfig,
    /// Bumped to drop every open connection.
    kick: watch::Sender<u64>,
    /// "Stopped": every connection is closed at once, none is served (rows are kept).
    down: std::sync::atomic::AtomicBool,
}

/// A running server; dropping it stops it and closes its connections.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: watch::Sender<bool>,
}

impl TestServer {
    /// Bind and start serving on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let host_id = {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&0x7e57_5e7e_0000_4000u64.to_be_bytes());
            id[8..].copy_from_slice(&(0x8000_0000_0000_0000u64 | addr.port() as u64).to_be_bytes());
            id
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(addr.ip(), host_id, config.profile)),
            prepared: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            fault_rules: AtomicU64::new(0),
            config,
            kick: watch::channel(0).0,
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let sh = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => return,
                    acc = listener.accept() => {
                        let Ok((sock, _)) = acc else { continue };
                        if sh.down.load(Ordering::Relaxed) {
                            continue; // dropped: closed without a word
                        }
                        let _ = sock.set_nodelay(true);
                        let id = sh.connections.fetch_add(1, Ordering::Relaxed);
                        let (sh2, stop) = (sh.clone(), stop_rx.clone());
                        tokio::spawn(async move { serve(sh2, sock, id, stop).await });
                    }
                }
            }
        });
        Ok(TestServer {
            addr,
            shared,
            _stop: stop_tx,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add a fault rule; rules are checked in the order added, the first match applies.
    pub fn inject(&self, fault: Fault) {
        self.shared.fault_rules.fetch_add(1, Ordering::Relaxed);
        self.shared.faults.lock().expect("lock").push(ActiveFault {
            fault,
            seen: 0,
            hit: 0,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("lock").clear();
        self.shared.fault_rules.store(0, Ordering::Relaxed);
    }

    /// How many requests the faults added so far have hit.
    pub fn faults_hit(&self) -> u64 {
        self.shared
            .faults
            .lock()
            .expect("lock")
            .iter()
            .map(|f| f.hit)
            .sum()
    }

    /// The request log (empty when `log_requests` is off).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("lock").clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().expect("lock").clear();
    }

    /// Requests received with this opcode (kept even when the log is off).
    pub fn count(&self, op: Opcode) -> u64 {
        self.shared
            .counts
            .lock()
            .expect("lock")
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Rows in a table, or None if it does not exist.
    pub fn row_count(&self, keyspace: &str, table: &str) -> Option<usize> {
        let store = self.shared.store.lock().expect("lock");
        store.table(keyspace, table).map(|t| t.row_count())
    }

    /// Connections accepted since start.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Close every open connection (the driver should reconnect).
    pub fn drop_connections(&self) {
        self.shared.kick.send_modify(|v| *v += 1);
    }

    /// An outage: while down, every connection is closed, new ones as soon as they are
    /// accepted, as a stopped node looks to a client; the rows are kept for when it is up.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
        if down {
            self.drop_connections();
        }
    }
}

async fn serve(sh: Arc<Shared>, sock: TcpStream, conn: u64, mut stop: watch::Receiver<bool>) {
    let (rd, mut wr) = sock.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        // Coalesce the responses that are ready into one write: a syscall per response
        // was most of the server's cost under load.
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(frame) = rx.recv().await {
            buf.extend_from_slice(&frame);
            while buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(f) => buf.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    let mut kick = sh.kick.subscribe();
    let state = Arc::new(ConnState {
        keyspace: Mutex::new(None),
        lwt_mark: std::sync::atomic::AtomicBool::new(false),
    });
    loop {
        let mut head = [0u8; HEADER_LEN];
        let read = tokio::select! {
            _ = stop.changed() => break,
            _ = kick.changed() => break,
            r = rd.read_exact(&mut head) => r,
        };
        if read.is_err() {
            break;
        }
        let h = frame::parse_header(&head);
        if h.length > frame::MAX_BODY {
            break;
        }
        let mut body = vec![0u8; h.length];
        if rd.read_exact(&mut body).await.is_err() {
            break;
        }
        if h.version & 0x7F != 4 {
            let e = CqlError::new(
                code::PROTOCOL_ERROR,
                format!(
                    "Invalid or unsupported protocol version ({}); supported versions are (4/v4)",
                    h.version & 0x7F
                ),
            );
            let _ = tx.send(frame::response(h.stream, Opcode::Error, &error_body(&e)));
            continue;
        }
        let Some(op) = Opcode::from_u8(h.opcode) else {
            let e = CqlError::new(
                code::PROTOCOL_ERROR,
                format!("unknown opcode {:#04x}", h.opcode),
            );
            let _ = tx.send(frame::response(h.stream, Opcode::Error, &error_body(&e)));
            continue;
        };
        if h.flags & 0x01 != 0 {
            let e = CqlError::new(
                code::PROTOCOL_ERROR,
                "compression is not supported by cql-test-server",
            );
            let _ = tx.send(frame::response(h.stream, Opcode::Error, &error_body(&e)));
            continue;
        }
        *sh.counts.lock().expect("lock").entry(op).or_default() += 1;
        // Describing a request costs a second parse: only when a log or a fault needs it.
        let watched = sh.config.log_requests || sh.fault_rules.load(Ordering::Relaxed) > 0;
        let (statement, values, consistency) = if watched {
            describe(&sh, op, &body)
        } else {
            (None, 0, None)
        };
        let fault = if watched {
            pick_fault(&sh, op, statement.as_deref())
        } else {
            None
        };
        if sh.config.log_requests {
            sh.log.lock().expect("lock").push(LoggedRequest {
                connection: conn,
                opcode: op,
                statement,
                values,
                consistency,
                fault: fault.clone(),
            });
        }
        match fault {
            Some(FaultKind::DropConnection) => break,
            Some(FaultKind::Delay(d)) => {
                let (sh, tx, state) = (sh.clone(), tx.clone(), state.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let resp = handle(&sh, &state, h.stream, op, &body);
                    let _ = tx.send(resp);
                });
            }
            Some(kind) => {
                let e = fault_error(&kind, op, consistency.unwrap_or(1));
                let _ = tx.send(frame::response(h.stream, Opcode::Error, &error_body(&e)));
            }
            None => {
                let resp = handle(&sh, &state, h.stream, op, &body);
                let _ = tx.send(resp);
            }
        }
    }
    drop(tx);
    writer.abort();
}

struct ConnState {
    keyspace: Mutex<Option<String>>,
    /// The client asked for ScyllaDB's LWT flag in PREPARED metadata.
    lwt_mark: std::sync::atomic::AtomicBool,
}

fn pick_fault(sh: &Shared, op: Opcode, statement: Option<&str>) -> Option<FaultKind> {
    let mut faults = sh.faults.lock().expect("lock");
    for f in faults.iter_mut() {
        if f.hit >= f.fault.times || !f.fault.matches(op, statement) {
            continue;
        }
        f.seen += 1;
        if f.seen <= f.fault.skip {
            continue;
        }
        f.hit += 1;
        return Some(f.fault.kind.clone());
    }
    None
}

fn fault_error(kind: &FaultKind, op: Opcode, cl: u16) -> CqlError {
    let mut w = Writer::default();
    let (code, msg) = match kind {
        FaultKind::Overloaded => (code::OVERLOADED, "injected fault: overloaded"),
        FaultKind::WriteTimeout => {
            w.u16(cl).i32(0).i32(1);
            w.string(if op == Opcode::Batch {
                "BATCH"
            } else {
                "SIMPLE"
            });
            (code::WRITE_TIMEOUT, "injected fault: write timeout")
        }
        FaultKind::ReadTimeout => {
            w.u16(cl).i32(0).i32(1).u8(0);
            (code::READ_TIMEOUT, "injected fault: read timeout")
        }
        FaultKind::Unavailable => {
            w.u16(cl).i32(1).i32(0);
            (code::UNAVAILABLE, "injected fault: unavailable")
        }
        FaultKind::ServerError => (code::SERVER_ERROR, "injected fault: server error"),
        FaultKind::Delay(_) | FaultKind::DropConnection => unreachable!("not an error"),
    };
    CqlError {
        code,
        message: msg.into(),
        extra: w.buf,
    }
}

/// Statement text, value count and consistency of a request, for the log and fault matching.
fn describe(sh: &Shared, op: Opcode, body: &[u8]) -> (Option<String>, usize, Option<u16>) {
    let mut r = Reader::new(body);
    match op {
        Opcode::Query => {
            let text = r.long_string().ok();
            let params = frame::query_params(&mut r).ok();
            (
                text,
                params.as_ref().map_or(0, |p| p.values.len()),
                params.map(|p| p.consistency),
            )
        }
        Opcode::Prepare => (r.long_string().ok(), 0, None),
        Opcode::Execute => {
            let id = r.short_bytes().unwrap_or_default();
            let text = sh
                .prepared
                .lock()
                .expect("lock")
                .get(&id)
                .map(|p| p.text.clone());
            let params = frame::query_params(&mut r).ok();
            (
                text,
                params.as_ref().map_or(0, |p| p.values.len()),
                params.map(|p| p.consistency),
            )
        }
        Opcode::Batch => match parse_batch(sh, body) {
            Ok(b) => (Some(b.texts.join("; ")), b.items.len(), Some(b.consistency)),
            Err(_) => (None, 0, None),
        },
        _ => (None, 0, None),
    }
}

fn handle(sh: &Shared, conn: &ConnState, stream: i16, op: Opcode, body: &[u8]) -> Vec<u8> {
    let out = handle_inner(sh, conn, op, body);
    // Client warnings of the statement (a tablet keyspace created, a big batch on Cassandra).
    let warnings = sh.store.lock().expect("lock").take_warnings();
    match out {
        Ok((op, body)) => frame::response_with_warnings(stream, op, &body, &warnings),
        Err(e) => frame::response(stream, Opcode::Error, &error_body(&e)),
    }
}

fn malformed(e: frame::Malformed) -> CqlError {
    CqlError::new(code::PROTOCOL_ERROR, e.0)
}

fn handle_inner(
    sh: &Shared,
    conn: &ConnState,
    op: Opcode,
    body: &[u8],
) -> Result<(Opcode, Vec<u8>), CqlError> {
    let mut r = Reader::new(body);
    let mut w = Writer::default();
    match op {
        Opcode::Options => {
            let supported = sh.config.profile.supported();
            let pairs: Vec<(&str, Vec<&str>)> = supported
                .iter()
                .map(|(k, v)| (*k, v.iter().map(String::as_str).collect()))
                .collect();
            let refs: Vec<(&str, &[&str])> =
                pairs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            w.string_multimap(&refs);
            Ok((Opcode::Supported, w.buf))
        }
        Opcode::Startup => {
            let opts = r.string_map().map_err(malformed)?;
            // A client that asks for ScyllaDB's LWT mark gets it in PREPARED results.
            if sh.config.profile.is_scylla() && opts.contains_key("SCYLLA_LWT_ADD_METADATA_MARK") {
                conn.lwt_mark.store(true, Ordering::Relaxed);
            }
            if opts.contains_key("COMPRESSION") {
                return Err(CqlError::new(
                    code::PROTOCOL_ERROR,
                    "compression is not supported by cql-test-server",
                ));
            }
            if sh.config.credentials.is_some() {
                w.string("org.apache.cassandra.auth.PasswordAuthenticator");
                return Ok((Opcode::Authenticate, w.buf));
            }
            Ok((Opcode::Ready, w.buf))
        }
        Opcode::AuthResponse => {
            let token = r.bytes().map_err(malformed)?.unwrap_or_default();
            let mut parts = token.split(|b| *b == 0).skip(1);
            let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
            let pass = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
            match &sh.config.credentials {
                Some((u, p)) if *u == user && *p == pass => {
                    w.bytes(None);
                    Ok((Opcode::AuthSuccess, w.buf))
                }
                _ => Err(CqlError::new(
                    code::BAD_CREDENTIALS,
                    format!("Provided username {user} and/or password are incorrect"),
                )),
            }
        }
        Opcode::Register => Ok((Opcode::Ready, w.buf)),
        Opcode::Query => {
            let text = r.long_string().map_err(malformed)?;
            let params = frame::query_params(&mut r).map_err(malformed)?;
            let parsed = cql::parse(&text).map_err(|e| CqlError::new(code::SYNTAX_ERROR, e))?;
            run(sh, conn, &parsed, &params, false)
        }
        Opcode::Prepare => {
            let text = r.long_string().map_err(malformed)?;
            let parsed =
                Arc::new(cql::parse(&text).map_err(|e| CqlError::new(code::SYNTAX_ERROR, e))?);
            let ks = conn.keyspace.lock().expect("lock").clone();
            let meta = sh
                .store
                .lock()
                .expect("lock")
                .prepare(&parsed, ks.as_deref())?;
            let id = statement_id(ks.as_deref(), &text);
            w.i32(0x0004).short_bytes(&id);
            let mark = meta.lwt && conn.lwt_mark.load(Ordering::Relaxed);
            write_prepared_metadata(&mut w, &meta, mark);
            match &meta.result {
                Some(cols) => write_rows_metadata(&mut w, meta.table.as_ref(), cols, None, false),
                None => {
                    w.i32(0x0004).i32(0);
                }
            }
            sh.prepared
                .lock()
                .expect("lock")
                .insert(id, Arc::new(Prepared { text, parsed }));
            Ok((Opcode::Result, w.buf))
        }
        Opcode::Execute => {
            let id = r.short_bytes().map_err(malformed)?;
            let p = prepared(sh, &id)?;
            let params = frame::query_params(&mut r).map_err(malformed)?;
            run(sh, conn, &p.parsed, &params, params.skip_metadata)
        }
        Opcode::Batch => {
            let b = parse_batch(sh, body)?;
            let ks = conn.keyspace.lock().expect("lock").clone();
            sh.store
                .lock()
                .expect("lock")
                .execute_batch(&b.items, ks.as_deref(), b.timestamp)?;
            w.i32(0x0001);
            Ok((Opcode::Result, w.buf))
        }
        other => Err(CqlError::new(
            code::PROTOCOL_ERROR,
            format!("unexpected {other:?} request"),
        )),
    }
}

fn run(
    sh: &Shared,
    conn: &ConnState,
    parsed: &cql::Parsed,
    params: &frame::QueryParams,
    skip_metadata: bool,
) -> Result<(Opcode, Vec<u8>), CqlError> {
    let ks = conn.keyspace.lock().expect("lock").clone();
    let outcome = sh.store.lock().expect("lock").execute(
        parsed,
        &Exec {
            keyspace: ks.as_deref(),
            values: &params.values,
            page_size: params.page_size,
            paging_state: params.paging_state.as_deref(),
            timestamp: params.default_timestamp,
            // SERIAL (0x0008) and LOCAL_SERIAL (0x0009) reads go through Paxos.
            serial: matches!(params.consistency, 0x0008 | 0x0009),
        },
    )?;
    let mut w = Writer::default();
    match outcome {
        Outcome::Void => {
            w.i32(0x0001);
        }
        Outcome::SetKeyspace(k) => {
            w.i32(0x0003).string(&k);
            *conn.keyspace.lock().expect("lock") = Some(k);
        }
        Outcome::SchemaChange {
            change,
            target,
            keyspace,
            table,
        } => {
            w.i32(0x0005)
                .string(change)
                .string(target)
                .string(&keyspace);
            if let Some(t) = table {
                w.string(&t);
            }
        }
        Outcome::Rows(rows) => {
            w.i32(0x0002);
            let table = (rows.keyspace.clone(), rows.table.clone());
            write_rows_metadata(
                &mut w,
                Some(&table),
                &rows.columns,
                rows.paging_state.as_deref(),
                skip_metadata,
            );
            w.i32(rows.rows.len() as i32);
            for row in &rows.rows {
                for cell in row {
                    w.bytes(cell.as_deref());
                }
            }
        }
    }
    Ok((Opcode::Result, w.buf))
}

fn write_prepared_metadata(w: &mut Writer, meta: &PreparedMeta, lwt_mark: bool) {
    let global = meta.table.is_some();
    let mut flags = if global { 0x0001u32 } else { 0 };
    if lwt_mark {
        flags |= profile::LWT_MARK;
    }
    w.i32(flags as i32);
    w.i32(meta.variables.len() as i32);
    w.i32(meta.pk_indexes.len() as i32);
    for i in &meta.pk_indexes {
        w.u16(*i);
    }
    if let Some((ks, t)) = &meta.table {
        w.string(ks).string(t);
    }
    for v in &meta.variables {
        w.string(&v.name);
        v.ty.write_option(w);
    }
}

fn write_rows_metadata(
    w: &mut Writer,
    table: Option<&(String, String)>,
    cols: &[engine::Column],
    paging_state: Option<&[u8]>,
    no_metadata: bool,
) {
    let mut flags = 0;
    if table.is_some() {
        flags |= 0x0001;
    }
    if paging_state.is_some() {
        flags |= 0x0002;
    }
    if no_metadata {
        flags = (flags & 0x0002) | 0x0004;
    }
    w.i32(flags).i32(cols.len() as i32);
    if let Some(p) = paging_state {
        w.bytes(Some(p));
    }
    if no_metadata {
        return;
    }
    if let Some((ks, t)) = table {
        w.string(ks).string(t);
    }
    for c in cols {
        w.string(&c.name);
        c.ty.write_option(w);
    }
}

fn error_body(e: &CqlError) -> Vec<u8> {
    let mut w = Writer::default();
    w.i32(e.code).string(&e.message);
    w.buf.extend_from_slice(&e.extra);
    w.buf
}

/// The prepared statement `id`, or the Unprepared error that makes the driver re-prepare.
fn prepared(sh: &Shared, id: &[u8]) -> Result<Arc<Prepared>, CqlError> {
    if let Some(p) = sh.prepared.lock().expect("lock").get(id) {
        return Ok(p.clone());
    }
    let mut e = Writer::default();
    e.short_bytes(id);
    Err(CqlError {
        code: code::UNPREPARED,
        message: "Prepared query with ID not found".into(),
        extra: e.buf,
    })
}

/// A stable 16-byte id for a statement in a keyspace.
fn statement_id(ks: Option<&str>, text: &str) -> Vec<u8> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::with_capacity(16);
    for salt in [0x51u8, 0xA7] {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        ks.hash(&mut h);
        text.hash(&mut h);
        out.extend(h.finish().to_be_bytes());
    }
    out
}

struct Batch {
    items: Vec<(Arc<cql::Parsed>, Vec<Value>)>,
    texts: Vec<String>,
    consistency: u16,
    timestamp: Option<i64>,
}

fn parse_batch(sh: &Shared, body: &[u8]) -> Result<Batch, CqlError> {
    let mut r = Reader::new(body);
    let _kind = r.u8().map_err(malformed)?;
    let n = r.u16().map_err(malformed)?;
    let mut items = Vec::with_capacity(n as usize);
    let mut texts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let kind = r.u8().map_err(malformed)?;
        let (parsed, text) = match kind {
            0 => {
                let text = r.long_string().map_err(malformed)?;
                let p = cql::parse(&text).map_err(|e| CqlError::new(code::SYNTAX_ERROR, e))?;
                (Arc::new(p), text)
            }
            1 => {
                let id = r.short_bytes().map_err(malformed)?;
                let p = prepared(sh, &id)?;
                (p.parsed.clone(), p.text.clone())
            }
            k => {
                return Err(CqlError::new(
                    code::PROTOCOL_ERROR,
                    format!("bad batch kind {k}"),
                ));
            }
        };
        let nv = r.u16().map_err(malformed)?;
        let values = (0..nv)
            .map(|_| r.value())
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        items.push((parsed, values));
        texts.push(text);
    }
    let consistency = r.u16().map_err(malformed)?;
    let flags = r.u8().map_err(malformed)?;
    if flags & 0x40 != 0 {
        return Err(CqlError::new(
            code::PROTOCOL_ERROR,
            "named values in BATCH are not supported",
        ));
    }
    if flags & 0x10 != 0 {
        r.u16().map_err(malformed)?;
    }
    let timestamp = if flags & 0x20 != 0 {
        Some(r.i64().map_err(malformed)?)
    } else {
        None
    };
    Ok(Batch {
        items,
        texts,
        consistency,
        timestamp,
    })
}
