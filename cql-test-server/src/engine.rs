//! Keyspaces, tables and rows in memory, and the execution of parsed statements. System tables
//! (`system.local`, `system.peers`, `system_schema.*`) are ordinary tables here, kept in step
//! with DDL, so the driver's metadata queries run through the same SELECT path as ours.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cql::{
    self, Cond, Condition, Describe, Op, Parsed, Projection, Rhs, Stmt, TableRef, Term,
};
use crate::frame::Value;
use crate::profile::{self, Profile};
use crate::types::{self, CqlType, Literal};

/// A CQL error response: code, message, and the code-specific trailing fields.
#[derive(Debug, Clone)]
pub struct CqlError {
    pub code: i32,
    pub message: String,
    pub extra: Vec<u8>,
}

pub mod code {
    pub const SERVER_ERROR: i32 = 0x0000;
    pub const PROTOCOL_ERROR: i32 = 0x000A;
    pub const BAD_CREDENTIALS: i32 = 0x0100;
    pub const UNAVAILABLE: i32 = 0x1000;
    pub const OVERLOADED: i32 = 0x1001;
    pub const WRITE_TIMEOUT: i32 = 0x1100;
    pub const READ_TIMEOUT: i32 = 0x1200;
    pub const SYNTAX_ERROR: i32 = 0x2000;
    pub const INVALID: i32 = 0x2200;
    pub const CONFIG_ERROR: i32 = 0x2300;
    pub const ALREADY_EXISTS: i32 = 0x2400;
    pub const UNPREPARED: i32 = 0x2500;
}

impl CqlError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(code::INVALID, message)
    }

    fn already_exists(ks: &str, table: &str, message: String) -> Self {
        let mut w = crate::frame::Writer::default();
        w.string(ks).string(table);
        Self {
            code: code::ALREADY_EXISTS,
            message,
            extra: w.buf,
        }
    }
}

type Res<T> = Result<T, CqlError>;

/// A row as a query returns it: one value per column.
pub type Row = Vec<Option<Vec<u8>>>;

/// A written cell: its value (None: a deletion) and its write timestamp (µs).
#[derive(Debug, Clone)]
struct Cell {
    ts: i64,
    value: Option<Vec<u8>>,
}

/// A stored row: a cell per column (None: never written; key columns hold the key), the row
/// marker an INSERT leaves (so a row of keys only still exists), and the row's tombstone.
/// Deletions are kept, so a write that arrives later with an older timestamp stays shadowed:
/// last write wins by timestamp, whatever the arrival order, as in Cassandra and ScyllaDB.
#[derive(Debug, Clone)]
struct StoredRow {
    cells: Vec<Option<Cell>>,
    marker: Option<i64>,
    tomb: Option<i64>,
}

impl StoredRow {
    fn new(width: usize) -> Self {
        StoredRow {
            cells: vec![None; width],
            marker: None,
            tomb: None,
        }
    }
}

/// One partition's rows in clustering order, and its tombstone.
#[derive(Debug, Default)]
struct Partition {
    tomb: Option<i64>,
    rows: BTreeMap<CkKey, StoredRow>,
}

/// Merge a write into a cell: the later timestamp wins; on a tie a deletion wins, then the
/// greater value (Cassandra's rules).
fn merge_cell(slot: &mut Option<Cell>, new: Cell) {
    let replace = match slot {
        None => true,
        Some(old) if new.ts != old.ts => new.ts > old.ts,
        Some(old) => match (&old.value, &new.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(a), Some(b)) => b > a,
        },
    };
    if replace {
        *slot = Some(new);
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: CqlType,
}

/// A clustering key, ordered by its column types (reversed for DESC columns).
#[derive(Debug, Clone)]
struct CkKey {
    vals: Vec<Vec<u8>>,
    spec: Arc<Vec<(CqlType, bool)>>,
}

impl PartialEq for CkKey {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for CkKey {}
impl PartialOrd for CkKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for CkKey {
    fn cmp(&self, o: &Self) -> Ordering {
        for ((a, b), (t, desc)) in self.vals.iter().zip(&o.vals).zip(self.spec.iter()) {
            let c = types::compare(t, a, b);
            let c = if *desc { c.reverse() } else { c };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }
}

#[derive(Debug)]
pub struct Table {
    pub keyspace: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub partition_key: Vec<usize>,
    pub clustering: Vec<usize>,
    spec: Arc<Vec<(CqlType, bool)>>,
    partitions: BTreeMap<Vec<u8>, Partition>,
}

impl Table {
    fn column(&self, name: &str) -> Res<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| CqlError::invalid(format!("Undefined column name {name}")))
    }

    /// Rows a query would return (deleted ones excluded).
    pub fn row_count(&self) -> usize {
        self.partitions
            .values()
            .map(|p| {
                p.rows
                    .values()
                    .filter(|r| self.visible(p, r).is_some())
                    .count()
            })
            .sum()
    }

    /// Its `CREATE TABLE` statement (DESCRIBE), without the server's table options.
    fn ddl(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("    {} {}", c.name, c.ty.cql_name()))
            .collect();
        let names = |idx: &[usize]| -> Vec<String> {
            idx.iter().map(|i| self.columns[*i].name.clone()).collect()
        };
        let pk = names(&self.partition_key);
        let ck = names(&self.clustering);
        let pk = if pk.len() == 1 {
            pk[0].clone()
        } else {
            format!("({})", pk.join(", "))
        };
        let key = if ck.is_empty() {
            format!("({pk})")
        } else {
            format!("({pk}, {})", ck.join(", "))
        };
        let mut s = format!(
            "CREATE TABLE {}.{} (\n{},\n    PRIMARY KEY {key}\n)",
            self.keyspace,
            self.name,
            cols.join(",\n")
        );
        if !ck.is_empty() {
            let order: Vec<String> = self
                .clustering
                .iter()
                .zip(self.spec.iter())
                .map(|(i, (_, desc))| {
                    format!(
                        "{} {}",
                        self.columns[*i].name,
                        if *desc { "DESC" } else { "ASC" }
                    )
                })
                .collect();
            s.push_str(&format!(" WITH CLUSTERING ORDER BY ({})", order.join(", ")));
        }
        s.push(';');
        s
    }

    fn is_key(&self, i: usize) -> bool {
        self.partition_key.contains(&i) || self.clustering.contains(&i)
    }

    /// The row as a query sees it, or None when nothing of it is live.
    fn visible(&self, part: &Partition, r: &StoredRow) -> Option<Row> {
        let shadow = part.tomb.max(r.tomb);
        let live = |ts: i64| shadow.is_none_or(|s| ts > s);
        let mut any = r.marker.is_some_and(live);
        let mut out: Row = vec![None; self.columns.len()];
        for (i, c) in r.cells.iter().enumerate() {
            let Some(c) = c else { continue };
            if self.is_key(i) {
                out[i] = c.value.clone();
            } else if live(c.ts)
                && let Some(v) = &c.value
            {
                out[i] = Some(v.clone());
                any = true;
            }
        }
        any.then_some(out)
    }
}

fn pk_bytes(vals: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in vals {
        out.extend((v.len() as u32).to_be_bytes());
        out.extend(*v);
    }
    out
}

/// What a statement returned.
#[derive(Debug)]
pub enum Outcome {
    Void,
    SetKeyspace(String),
    SchemaChange {
        change: &'static str,
        target: &'static str,
        keyspace: String,
        table: Option<String>,
    },
    Rows(RowsResult),
}

#[derive(Debug)]
pub struct RowsResult {
    pub keyspace: String,
    pub table: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    pub paging_state: Option<Vec<u8>>,
}

/// A prepared statement's bind variables and result columns.
#[derive(Debug, Clone)]
pub struct PreparedMeta {
    pub table: Option<(String, String)>,
    pub variables: Vec<Column>,
    /// For each partition-key column, the index of the variable that binds it (empty if the
    /// statement does not bind the whole partition key).
    pub pk_indexes: Vec<u16>,
    pub result: Option<Vec<Column>>,
    /// A lightweight transaction.
    pub lwt: bool,
}

/// One row change, validated before any change of a request is applied.
struct Mutation {
    table: (String, String),
    pk: Vec<u8>,
    ck: Option<Vec<Vec<u8>>>,
    kind: MutationKind,
    /// The write timestamp: `USING TIMESTAMP`, the request's, or the server clock.
    ts: i64,
}

enum MutationKind {
    /// Cells to write; `marker`: an INSERT (the row exists even with only its key).
    Upsert {
        cells: Vec<(usize, Option<Vec<u8>>)>,
        marker: bool,
    },
    Delete,
}

pub struct Store {
    /// Keyspace names; their replication options live in `system_schema.keyspaces`.
    keyspaces: BTreeSet<String>,
    tables: BTreeMap<(String, String), Table>,
    schema_changes: u64,
    pub datacenter: String,
    /// The last timestamp the server gave a write (µs), so its writes are strictly ordered.
    clock: i64,
    /// The server emulated.
    pub profile: Profile,
    /// Keyspaces that use tablets, with their initial tablet count.
    tablets: BTreeMap<String, i32>,
    /// Client warnings of the statement being executed (drained by the connection).
    warnings: Vec<String>,
}

/// Execution context: the connection's keyspace and the request's bound values.
pub struct Exec<'a> {
    pub keyspace: Option<&'a str>,
    pub values: &'a [Value],
    pub page_size: Option<i32>,
    pub paging_state: Option<&'a [u8]>,
    /// The request's default timestamp (protocol flag 0x20), if the client sent one.
    pub timestamp: Option<i64>,
    /// A read at SERIAL or LOCAL_SERIAL (it goes through Paxos, like a lightweight
    /// transaction).
    pub serial: bool,
}

const SYSTEM_TABLES: &[&str] = &[
    "CREATE TABLE system.local (key text PRIMARY KEY, bootstrapped text, broadcast_address inet, \
     cluster_name text, cql_version text, data_center text, host_id uuid, listen_address inet, \
     native_protocol_version text, partitioner text, rack text, release_version text, \
     rpc_address inet, schema_version uuid, tokens set<text>)",
    "CREATE TABLE system.peers (peer inet PRIMARY KEY, data_center text, host_id uuid, \
     preferred_ip inet, rack text, release_version text, rpc_address inet, schema_version uuid, \
     tokens set<text>)",
    "CREATE TABLE system_schema.keyspaces (keyspace_name text PRIMARY KEY, durable_writes boolean, \
     replication frozen<map<text, text>>)",
    "CREATE TABLE system_schema.tables (keyspace_name text, table_name text, comment text, \
     flags frozen<set<text>>, id uuid, default_time_to_live int, gc_grace_seconds int, \
     PRIMARY KEY ((keyspace_name), table_name))",
    "CREATE TABLE system_schema.columns (keyspace_name text, table_name text, column_name text, \
     clustering_order text, column_name_bytes blob, kind text, position int, type text, \
     PRIMARY KEY ((keyspace_name), table_name, column_name))",
    "CREATE TABLE system_schema.types (keyspace_name text, type_name text, \
     field_names frozen<list<text>>, field_types frozen<list<text>>, \
     PRIMARY KEY ((keyspace_name), type_name))",
    "CREATE TABLE system_schema.views (keyspace_name text, view_name text, base_table_name text, \
     PRIMARY KEY ((keyspace_name), view_name))",
    // Read by the Python drivers' schema parser on connect (every one of these queries
    // failing fails the connection); empty here, as no statement of ours makes any.
    "CREATE TABLE system_schema.functions (keyspace_name text, function_name text, \
     argument_types frozen<list<text>>, argument_names frozen<list<text>>, body text, \
     called_on_null_input boolean, language text, return_type text, \
     PRIMARY KEY ((keyspace_name), function_name, argument_types))",
    "CREATE TABLE system_schema.aggregates (keyspace_name text, aggregate_name text, \
     argument_types frozen<list<text>>, final_func text, initcond text, return_type text, \
     state_func text, state_type text, PRIMARY KEY ((keyspace_name), aggregate_name, argument_types))",
    "CREATE TABLE system_schema.indexes (keyspace_name text, table_name text, index_name text, \
     kind text, options frozen<map<text, text>>, PRIMARY KEY ((keyspace_name), table_name, index_name))",
    "CREATE TABLE system_schema.triggers (keyspace_name text, table_name text, trigger_name text, \
     options frozen<map<text, text>>, PRIMARY KEY ((keyspace_name), table_name, trigger_name))",
];

/// System tables of ScyllaDB only (`db/system_keyspace.cc`, `db/schema_tables.cc`,
/// `db/virtual_tables.cc`).
const SCYLLA_TABLES: &[&str] = &[
    "CREATE TABLE system.versions (key text PRIMARY KEY, build_id text, build_mode text, version text)",
    "CREATE TABLE system_schema.scylla_tables (keyspace_name text, table_name text, partitioner text, \
     PRIMARY KEY ((keyspace_name), table_name))",
];

/// `system_schema.scylla_keyspaces`: without `initial_tablets` in 5.4.
const SCYLLA_KEYSPACES_5_4: &str = "CREATE TABLE system_schema.scylla_keyspaces (keyspace_name text PRIMARY KEY, \
     storage_options frozen<map<text, text>>, storage_type text)";
const SCYLLA_KEYSPACES: &str = "CREATE TABLE system_schema.scylla_keyspaces (keyspace_name text PRIMARY KEY, \
     initial_tablets int, storage_options frozen<map<text, text>>, storage_type text)";

/// Cassandra 4.0+ only: `system.peers_v2` (ScyllaDB has none).
const CASSANDRA_TABLES: &[&str] = &[
    "CREATE TABLE system.peers_v2 (peer inet, peer_port int, data_center text, host_id uuid, \
     preferred_ip inet, preferred_port int, rack text, release_version text, native_address inet, \
     native_port int, schema_version uuid, tokens set<text>, PRIMARY KEY ((peer), peer_port))",
];

fn text(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn inet(ip: IpAddr) -> Option<Vec<u8>> {
    Some(match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    })
}

impl Store {
    /// A store with the system tables of `profile`, describing one node listening on
    /// `listen`.
    pub fn new(listen: IpAddr, host_id: [u8; 16], profile: Profile) -> Self {
        let mut s = Store {
            keyspaces: BTreeSet::new(),
            tables: BTreeMap::new(),
            schema_changes: 0,
            datacenter: "datacenter1".into(),
            clock: 0,
            profile,
            tablets: BTreeMap::new(),
            warnings: Vec::new(),
        };
        for ks in ["system", "system_schema"] {
            s.keyspaces.insert(ks.into());
        }
        let mut ddls: Vec<&str> = SYSTEM_TABLES.to_vec();
        if profile.is_scylla() {
            ddls.extend(SCYLLA_TABLES);
            ddls.push(if profile.has_tablets() {
                SCYLLA_KEYSPACES
            } else {
                SCYLLA_KEYSPACES_5_4
            });
        } else {
            ddls.extend(CASSANDRA_TABLES);
        }
        for ddl in ddls {
            let parsed = cql::parse(ddl).expect("system DDL parses");
            s.create_table(&parsed.stmt, None, false)
                .expect("system DDL applies");
        }
        if let Some(v) = profile.scylla_version() {
            s.put_system(
                "system",
                "versions",
                &[
                    ("key", text("local")),
                    ("version", text(v)),
                    ("build_mode", text("release")),
                    ("build_id", text("cql-test-server")),
                ],
            );
        }
        let tokens = {
            let mut b = 1i32.to_be_bytes().to_vec();
            b.extend(1i32.to_be_bytes());
            b.extend(b"0");
            b
        };
        let local = [
            ("key", text("local")),
            ("bootstrapped", text("COMPLETED")),
            ("broadcast_address", inet(listen)),
            ("cluster_name", text("cql-test-server")),
            ("cql_version", text(profile.cql_version())),
            ("data_center", text("datacenter1")),
            ("host_id", Some(host_id.to_vec())),
            ("listen_address", inet(listen)),
            ("native_protocol_version", text("4")),
            (
                "partitioner",
                text("org.apache.cassandra.dht.Murmur3Partitioner"),
            ),
            ("rack", text("rack1")),
            ("release_version", text(profile.release_version())),
            ("rpc_address", inet(listen)),
            ("tokens", Some(tokens)),
        ];
        s.put_system("system", "local", &local);
        s.bump_schema_version();
        s
    }

    pub fn table(&self, keyspace: &str, name: &str) -> Option<&Table> {
        self.tables.get(&(keyspace.to_string(), name.to_string()))
    }

    fn bump_schema_version(&mut self) {
        self.schema_changes += 1;
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&0x5eed_cafe_0000_4000u64.to_be_bytes());
        v[8..].copy_from_slice(&(0x8000_0000_0000_0000 | self.schema_changes).to_be_bytes());
        self.put_system(
            "system",
            "local",
            &[("key", text("local")), ("schema_version", Some(v.to_vec()))],
        );
    }

    /// Upsert a row into a system table by column name.
    fn put_system(&mut self, ks: &str, table: &str, cells: &[(&str, Option<Vec<u8>>)]) {
        let t = self
            .tables
            .get(&(ks.to_string(), table.to_string()))
            .expect("system table");
        let cells: Vec<(usize, Option<Vec<u8>>)> = cells
            .iter()
            .map(|(c, v)| (t.column(c).expect("system column"), v.clone()))
            .collect();
        let pk: Vec<&[u8]> = t
            .partition_key
            .iter()
            .map(|i| {
                cells
                    .iter()
                    .find(|(c, _)| c == i)
                    .and_then(|(_, v)| v.as_deref())
                    .expect("system pk")
            })
            .collect();
        let ck: Vec<Vec<u8>> = t
            .clustering
            .iter()
            .map(|i| {
                cells
                    .iter()
                    .find(|(c, _)| c == i)
                    .and_then(|(_, v)| v.clone())
                    .expect("system ck")
            })
            .collect();
        let m = Mutation {
            table: (ks.to_string(), table.to_string()),
            pk: pk_bytes(&pk),
            ck: Some(ck),
            kind: MutationKind::Upsert {
                cells,
                marker: true,
            },
            ts: self.tick(),
        };
        self.apply(m);
    }

    /// A server write timestamp: the clock in µs, strictly after the last one given.
    fn tick(&mut self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.clock = now.max(self.clock + 1);
        self.clock
    }

    fn delete_system_partition(&mut self, ks: &str, table: &str, key: &str, ck0: Option<&str>) {
        let t = self
            .tables
            .get_mut(&(ks.to_string(), table.to_string()))
            .expect("system table");
        let pk = pk_bytes(&[key.as_bytes()]);
        if let Some(p) = t.partitions.get_mut(&pk) {
            match ck0 {
                None => p.rows.clear(),
                Some(c) => p.rows.retain(|k, _| k.vals[0] != c.as_bytes()),
            }
            if p.rows.is_empty() {
                t.partitions.remove(&pk);
            }
        }
    }

    fn resolve<'a>(&self, t: &'a TableRef, current: Option<&'a str>) -> Res<(String, String)> {
        let ks = t.keyspace.as_deref().or(current).ok_or_else(|| {
            CqlError::invalid("No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename")
        })?;
        if !self.keyspaces.contains(ks) {
            return Err(CqlError::invalid(format!("Keyspace {ks} does not exist")));
        }
        let key = (ks.to_string(), t.name.clone());
        if !self.tables.contains_key(&key) {
            return Err(CqlError::invalid(self.profile.unknown_table(&t.name)));
        }
        Ok(key)
    }

    /// Bind variables and result columns of a statement, as PREPARE answers them.
    pub fn prepare(&self, p: &Parsed, current: Option<&str>) -> Res<PreparedMeta> {
        let mut vars: Vec<Option<Column>> = vec![None; p.markers];
        let mut set = |term: &Term, name: &str, ty: CqlType| {
            if let Term::Marker(i) = term {
                vars[*i] = Some(Column {
                    name: name.to_string(),
                    ty,
                });
            }
        };
        let timestamp = match &p.stmt {
            Stmt::Insert { timestamp, .. }
            | Stmt::Update { timestamp, .. }
            | Stmt::Delete { timestamp, .. } => timestamp.clone(),
            _ => None,
        };
        if let Some(t) = &timestamp {
            set(t, "[timestamp]", CqlType::BigInt);
        }
        let lwt = match &p.stmt {
            Stmt::Insert {
                if_not_exists: true,
                ..
            } => true,
            Stmt::Update { condition, .. } | Stmt::Delete { condition, .. } => condition.is_some(),
            _ => false,
        };
        let (table_ref, conds, result) = match &p.stmt {
            Stmt::Insert {
                table,
                columns,
                values,
                ..
            } => {
                let key = self.resolve(table, current)?;
                let t = &self.tables[&key];
                for (c, v) in columns.iter().zip(values) {
                    let i = t.column(c)?;
                    set(v, c, t.columns[i].ty.clone());
                }
                (Some(key), Vec::new(), None)
            }
            Stmt::Update {
                table,
                sets,
                conds,
                condition,
                ..
            } => {
                let key = self.resolve(table, current)?;
                let t = &self.tables[&key];
                for (c, v) in sets {
                    let i = t.column(c)?;
                    set(v, c, t.columns[i].ty.clone());
                }
                let mut all = conds.clone();
                if let Some(Condition::Conds(c)) = condition {
                    all.extend(c.iter().cloned());
                }
                (Some(key), all, None)
            }
            Stmt::Select {
                table,
                conds,
                limit,
                projection,
                ..
            } => {
                let key = self.resolve(table, current)?;
                let t = &self.tables[&key];
                if let Some(l) = limit {
                    set(l, "[limit]", CqlType::Int);
                }
                let cols = projected(t, projection)?;
                (Some(key), conds.clone(), Some(cols))
            }
            Stmt::Delete {
                table,
                conds,
                condition,
                ..
            } => {
                let mut all = conds.clone();
                if let Some(Condition::Conds(c)) = condition {
                    all.extend(c.iter().cloned());
                }
                (Some(self.resolve(table, current)?), all, None)
            }
            _ => (None, Vec::new(), None),
        };
        let result = if lwt {
            Some(vec![applied_column()])
        } else {
            result
        };
        if let Some(key) = &table_ref {
            let t = &self.tables[key];
            for c in &conds {
                let i = t.column(&c.column)?;
                let ty = t.columns[i].ty.clone();
                match (&c.rhs, c.op) {
                    (Rhs::One(term), Op::In) => set(term, &c.column, CqlType::List(Box::new(ty))),
                    (Rhs::One(term), _) => set(term, &c.column, ty),
                    (Rhs::List(terms), _) => {
                        for term in terms {
                            set(term, &c.column, ty.clone());
                        }
                    }
                }
            }
        }
        let variables: Vec<Column> = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| CqlError::invalid(format!("bind marker {i} is not supported here")))
            })
            .collect::<Res<_>>()?;
        let pk_indexes = match (&table_ref, &p.stmt) {
            (
                Some(key),
                Stmt::Insert {
                    columns, values, ..
                },
            ) => {
                let t = &self.tables[key];
                pk_markers(t, |name| {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .map(|i| &values[i])
                        .cloned()
                })
            }
            (
                Some(key),
                Stmt::Select { conds, .. }
                | Stmt::Delete { conds, .. }
                | Stmt::Update { conds, .. },
            ) => {
                let t = &self.tables[key];
                pk_markers(t, |name| {
                    conds
                        .iter()
                        .find(|c| c.column == name && c.op == Op::Eq)
                        .and_then(|c| match &c.rhs {
                            Rhs::One(term) => Some(term.clone()),
                            Rhs::List(_) => None,
                        })
                })
            }
            _ => Vec::new(),
        };
        Ok(PreparedMeta {
            table: table_ref,
            variables,
            pk_indexes,
            result,
            lwt,
        })
    }

    /// Run one statement.
    pub fn execute(&mut self, p: &Parsed, ex: &Exec) -> Res<Outcome> {
        match &p.stmt {
            Stmt::Insert {
                if_not_exists: true,
                ..
            } => self.lightweight(p, ex, |row, _, _| Ok(row.is_none())),
            Stmt::Update {
                condition: Some(c), ..
            }
            | Stmt::Delete {
                condition: Some(c), ..
            } => {
                let c = c.clone();
                self.lightweight(p, ex, move |row, t, values| match (&c, row) {
                    (_, None) => Ok(false),
                    (Condition::Exists, Some(_)) => Ok(true),
                    (Condition::Conds(conds), Some(r)) => conds_hold(t, conds, r, values),
                })
            }
            Stmt::Insert { .. } | Stmt::Update { .. } | Stmt::Delete { .. } => {
                let m = self.plan_mutation(p, ex)?;
                self.apply(m);
                Ok(Outcome::Void)
            }
            Stmt::Select { .. } => self.select(p, ex),
            Stmt::Use(ks) => {
                if !self.keyspaces.contains(ks) {
                    return Err(CqlError::invalid(format!("Keyspace '{ks}' does not exist")));
                }
                Ok(Outcome::SetKeyspace(ks.clone()))
            }
            Stmt::CreateKeyspace {
                name,
                if_not_exists,
                replication,
                durable_writes,
                tablets,
            } => self.create_keyspace(name, *if_not_exists, replication, *durable_writes, tablets),
            Stmt::Describe(what) => self.describe(what, ex.keyspace),
            Stmt::CreateTable { .. } => self.create_table(&p.stmt, ex.keyspace, true),
            Stmt::DropKeyspace { name, if_exists } => {
                if name.starts_with("system") {
                    return Err(CqlError::new(0x2100, format!("Cannot drop {name}")));
                }
                if !self.keyspaces.remove(name) {
                    if *if_exists {
                        return Ok(Outcome::Void);
                    }
                    return Err(CqlError::invalid(format!("Keyspace {name} does not exist")));
                }
                self.tables.retain(|(ks, _), _| ks != name);
                for t in ["keyspaces", "tables", "columns"] {
                    self.delete_system_partition("system_schema", t, name, None);
                }
                self.bump_schema_version();
                Ok(Outcome::SchemaChange {
                    change: "DROPPED",
                    target: "KEYSPACE",
                    keyspace: name.clone(),
                    table: None,
                })
            }
            Stmt::DropTable { table, if_exists } => {
                let key = match self.resolve(table, ex.keyspace) {
                    Ok(k) => k,
                    Err(_) if *if_exists => return Ok(Outcome::Void),
                    Err(e) => return Err(e),
                };
                self.tables.remove(&key);
                for t in ["tables", "columns"] {
                    self.delete_system_partition("system_schema", t, &key.0, Some(&key.1));
                }
                self.bump_schema_version();
                Ok(Outcome::SchemaChange {
                    change: "DROPPED",
                    target: "TABLE",
                    keyspace: key.0,
                    table: Some(key.1),
                })
            }
            Stmt::Truncate(table) => {
                let key = self.resolve(table, ex.keyspace)?;
                let t = self.tables.get_mut(&key).expect("resolved");
                t.partitions.clear();
                Ok(Outcome::Void)
            }
        }
    }

    /// CREATE KEYSPACE, as the profile's server checks it: the name, then the properties
    /// (`tablets` exists from ScyllaDB 6.0; Cassandra and ScyllaDB 5.4 say "Unknown property"),
    /// both even when `IF NOT EXISTS` finds the keyspace (ScyllaDB's `validate()` and
    /// Cassandra's `apply()` run first). A NetworkTopologyStrategy keyspace gets tablets
    /// unless it says `{'enabled': false}`, which the enforced mode refuses.
    fn create_keyspace(
        &mut self,
        name: &str,
        if_not_exists: bool,
        replication: &[(String, String)],
        durable_writes: bool,
        tablets: &Option<Vec<(String, String)>>,
    ) -> Res<Outcome> {
        let prof = self.profile;
        if let Some(e) = prof.bad_keyspace_name(name) {
            return Err(CqlError::invalid(e));
        }
        if tablets.is_some() && !prof.has_tablets() {
            return Err(CqlError::new(
                code::SYNTAX_ERROR,
                "Unknown property 'tablets'",
            ));
        }
        let class = replication
            .iter()
            .find(|(k, _)| k == "class")
            .map(|(_, v)| v.rsplit('.').next().unwrap_or(v).to_string())
            .unwrap_or_default();
        let mut initial: Option<i32> =
            (prof.has_tablets() && class == "NetworkTopologyStrategy").then_some(0);
        for (k, v) in tablets.iter().flatten() {
            match k.as_str() {
                "enabled" => match v.as_str() {
                    "false" if prof.tablets_enforced() => {
                        return Err(CqlError::new(code::CONFIG_ERROR, profile::TABLETS_ENFORCED));
                    }
                    "false" => initial = None,
                    "true" => {
                        if class != "NetworkTopologyStrategy" {
                            return Err(CqlError::new(
                                code::CONFIG_ERROR,
                                format!("{class} doesn't support tablet replication"),
                            ));
                        }
                        initial = Some(initial.unwrap_or(0));
                    }
                    other => {
                        return Err(CqlError::new(
                            code::CONFIG_ERROR,
                            format!("Tablets enabled value must be true or false; found: {other}"),
                        ));
                    }
                },
                "initial" => match v.parse::<i32>() {
                    Ok(n) => initial = Some(n),
                    Err(_) => {
                        return Err(CqlError::new(
                            code::CONFIG_ERROR,
                            format!("Initial tablets value should be numeric; found {v}"),
                        ));
                    }
                },
                other => {
                    return Err(CqlError::new(
                        code::CONFIG_ERROR,
                        format!("Unrecognized tablets option {other}"),
                    ));
                }
            }
        }
        if self.keyspaces.contains(name) {
            if if_not_exists {
                return Ok(Outcome::Void);
            }
            return Err(CqlError::already_exists(
                name,
                "",
                format!("Keyspace {name} already exists"),
            ));
        }
        let mut repl: Vec<(String, String)> = Vec::new();
        for (k, v) in replication {
            match (k.as_str(), v.as_str()) {
                ("class", c) if !c.contains('.') => {
                    repl.push(("class".into(), format!("org.apache.cassandra.locator.{c}")))
                }
                // NetworkTopologyStrategy expands a plain factor to every DC.
                ("replication_factor", rf) if class == "NetworkTopologyStrategy" => {
                    repl.push((self.datacenter.clone(), rf.to_string()))
                }
                _ => repl.push((k.clone(), v.clone())),
            }
        }
        let map = Literal::Map(
            repl.iter()
                .map(|(k, v)| (Literal::Str(k.clone()), Literal::Str(v.clone())))
                .collect(),
        );
        let map_t = CqlType::Map(Box::new(CqlType::Text), Box::new(CqlType::Text));
        let map_bytes = types::literal_to_bytes(&map, &map_t).map_err(CqlError::invalid)?;
        self.keyspaces.insert(name.to_string());
        self.put_system(
            "system_schema",
            "keyspaces",
            &[
                ("keyspace_name", text(name)),
                ("durable_writes", Some(vec![durable_writes as u8])),
                ("replication", map_bytes),
            ],
        );
        if let Some(n) = initial {
            self.tablets.insert(name.to_string(), n);
            // Only tablet keyspaces have a row (`make_create_keyspace_mutations`).
            self.put_system(
                "system_schema",
                "scylla_keyspaces",
                &[
                    ("keyspace_name", text(name)),
                    ("initial_tablets", Some(n.to_be_bytes().to_vec())),
                ],
            );
            self.warnings
                .extend(prof.tablets_warning().map(str::to_string));
        }
        self.bump_schema_version();
        Ok(Outcome::SchemaChange {
            change: "CREATED",
            target: "KEYSPACE",
            keyspace: name.to_string(),
            table: None,
        })
    }

    /// Whether `keyspace` uses tablets.
    pub fn uses_tablets(&self, keyspace: &str) -> bool {
        self.tablets.contains_key(keyspace)
    }

    /// Client warnings of the last statement.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Server-side DESCRIBE: rows of (keyspace_name, type, name, create_statement), in the
    /// profile's form for the keyspace line (`data_dictionary.cc`; Cassandra's
    /// `KeyspaceMetadata.java`, with two spaces before `AND`).
    fn describe(&self, what: &Describe, current: Option<&str>) -> Res<Outcome> {
        let columns = ["keyspace_name", "type", "name", "create_statement"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                ty: CqlType::Text,
            })
            .collect();
        let mut rows: Vec<Row> = Vec::new();
        let row = |ks: &str, ty: &str, name: &str, stmt: String| -> Row {
            vec![text(ks), text(ty), text(name), Some(stmt.into_bytes())]
        };
        match what {
            Describe::Keyspaces => {
                for ks in &self.keyspaces {
                    rows.push(row(ks, "keyspace", ks, String::new()));
                }
            }
            Describe::Keyspace(ks) => {
                if !self.keyspaces.contains(ks) {
                    return Err(CqlError::invalid(format!("'{ks}' not found in keyspaces")));
                }
                rows.push(row(ks, "keyspace", ks, self.keyspace_ddl(ks)));
                for ((k, t), table) in &self.tables {
                    if k == ks {
                        rows.push(row(ks, "table", t, table.ddl()));
                    }
                }
            }
            Describe::Table(t) => {
                let key = self.resolve(t, current)?;
                let table = &self.tables[&key];
                rows.push(row(&key.0, "table", &key.1, table.ddl()));
            }
        }
        Ok(Outcome::Rows(RowsResult {
            keyspace: String::new(),
            table: String::new(),
            columns,
            rows,
            paging_state: None,
        }))
    }

    fn keyspace_ddl(&self, ks: &str) -> String {
        let repl = self
            .table("system_schema", "keyspaces")
            .and_then(|t| {
                let pk = pk_bytes(&[ks.as_bytes()]);
                let part = t.partitions.get(&pk)?;
                let r = part.rows.values().next()?;
                let row = t.visible(part, r)?;
                let i = t.column("replication").ok()?;
                row[i].clone()
            })
            .and_then(|b| types::map_text(&b).ok())
            .unwrap_or_default();
        let cassandra = !self.profile.is_scylla();
        let show = |(k, v): &(String, String)| {
            let v = if cassandra && k == "class" {
                v.trim_start_matches("org.apache.cassandra.locator.")
                    .to_string()
            } else {
                v.clone()
            };
            format!("'{k}': '{v}'")
        };
        let pairs: Vec<String> = repl.iter().map(show).collect();
        let sep = if cassandra { "  AND" } else { " AND" };
        format!(
            "CREATE KEYSPACE {ks} WITH replication = {{{}}}{sep} durable_writes = true{};",
            pairs.join(", "),
            self.profile.describe_tablets(self.tablets.get(ks).copied())
        )
    }

    fn create_table(&mut self, stmt: &Stmt, current: Option<&str>, register: bool) -> Res<Outcome> {
        let Stmt::CreateTable {
            table,
            if_not_exists,
            columns,
            partition_key,
            clustering,
            descending,
        } = stmt
        else {
            unreachable!("create_table called with {stmt:?}")
        };
        let ks = table
            .keyspace
            .as_deref()
            .or(current)
            .ok_or_else(|| CqlError::invalid("No keyspace has been specified"))?
            .to_string();
        if !self.keyspaces.contains(&ks) {
            return Err(CqlError::invalid(format!("Keyspace {ks} doesn't exist")));
        }
        let key = (ks.clone(), table.name.clone());
        if self.tables.contains_key(&key) {
            if *if_not_exists {
                return Ok(Outcome::Void);
            }
            return Err(CqlError::already_exists(
                &ks,
                &table.name,
                format!("Table {ks}.{} already exists", table.name),
            ));
        }
        let cols: Vec<Column> = columns
            .iter()
            .map(|(n, t)| Column {
                name: n.clone(),
                ty: t.clone(),
            })
            .collect();
        let find = |n: &String| {
            cols.iter().position(|c| &c.name == n).ok_or_else(|| {
                CqlError::invalid(format!("Unknown definition {n} referenced in PRIMARY KEY"))
            })
        };
        let pk: Vec<usize> = partition_key.iter().map(find).collect::<Res<_>>()?;
        let ck: Vec<usize> = clustering.iter().map(find).collect::<Res<_>>()?;
        let spec = Arc::new(
            ck.iter()
                .map(|i| (cols[*i].ty.clone(), descending.contains(&cols[*i].name)))
                .collect(),
        );
        if register {
            let flags = types::literal_to_bytes(
                &Literal::Coll(vec![Literal::Str("compound".into())]),
                &CqlType::Set(Box::new(CqlType::Text)),
            )
            .map_err(CqlError::invalid)?;
            let id = {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&(self.schema_changes + 1).to_be_bytes());
                v[6] = 0x40 | (v[6] & 0x0f);
                v[8] = 0x80;
                v.to_vec()
            };
            self.put_system(
                "system_schema",
                "tables",
                &[
                    ("keyspace_name", text(&ks)),
                    ("table_name", text(&table.name)),
                    ("flags", flags),
                    ("id", Some(id)),
                    ("default_time_to_live", Some(0i32.to_be_bytes().to_vec())),
                    ("gc_grace_seconds", Some(864000i32.to_be_bytes().to_vec())),
                ],
            );
            for (i, c) in cols.iter().enumerate() {
                let (kind, pos, order) = if let Some(p) = pk.iter().position(|x| *x == i) {
                    ("partition_key", p as i32, "none")
                } else if let Some(p) = ck.iter().position(|x| *x == i) {
                    let desc = descending.contains(&c.name);
                    ("clustering", p as i32, if desc { "desc" } else { "asc" })
                } else {
                    ("regular", -1, "none")
                };
                self.put_system(
                    "system_schema",
                    "columns",
                    &[
                        ("keyspace_name", text(&ks)),
                        ("table_name", text(&table.name)),
                        ("column_name", text(&c.name)),
                        ("clustering_order", text(order)),
                        ("column_name_bytes", text(&c.name)),
                        ("kind", text(kind)),
                        ("position", Some(pos.to_be_bytes().to_vec())),
                        ("type", text(&c.ty.cql_name())),
                    ],
                );
            }
            self.bump_schema_version();
        }
        self.tables.insert(
            key,
            Table {
                keyspace: ks.clone(),
                name: table.name.clone(),
                columns: cols,
                partition_key: pk,
                clustering: ck,
                spec,
                partitions: BTreeMap::new(),
            },
        );
        Ok(Outcome::SchemaChange {
            change: "CREATED",
            target: "TABLE",
            keyspace: ks,
            table: Some(table.name.clone()),
        })
    }

    /// Validate a batch's INSERT/DELETE statements, then apply all of them (or none).
    pub fn execute_batch(
        &mut self,
        items: &[(Arc<Parsed>, Vec<Value>)],
        ks: Option<&str>,
        timestamp: Option<i64>,
    ) -> Res<()> {
        // Only the batch's own timestamp is checked (`batch_statement.cc`).
        if let Some(ts) = timestamp {
            self.check_future(ts)?;
        }
        // One timestamp for the whole batch, as a coordinator gives it.
        let timestamp = Some(timestamp.unwrap_or_else(|| self.tick()));
        let mut muts = Vec::with_capacity(items.len());
        for (p, values) in items {
            match &p.stmt {
                Stmt::Insert {
                    if_not_exists: true,
                    ..
                }
                | Stmt::Update {
                    condition: Some(_), ..
                }
                | Stmt::Delete {
                    condition: Some(_), ..
                } => {
                    return Err(CqlError::invalid(
                        "cql-test-server does not support lightweight transactions in a BATCH",
                    ));
                }
                Stmt::Insert { .. } | Stmt::Update { .. } | Stmt::Delete { .. } => {}
                _ => {
                    return Err(CqlError::invalid(
                        "Only INSERT, UPDATE and DELETE statements are allowed in a BATCH",
                    ));
                }
            }
            let ex = Exec {
                keyspace: ks,
                values,
                page_size: None,
                paging_state: None,
                timestamp,
                serial: false,
            };
            muts.push(self.plan_mutation(p, &ex)?);
        }
        self.check_batch_size(&muts)?;
        for m in muts {
            self.apply(m);
        }
        Ok(())
    }

    /// The batch size thresholds, on a batch of more than one partition (ScyllaDB:
    /// `batch_statement.cc`, 128 KB warn in the server's log, 1024 KB fail; Cassandra:
    /// `BatchStatement.java`, 5 KiB warn to the client, 50 KiB fail). The size is that of the
    /// values written (the servers measure their mutations' memory, a little more).
    fn check_batch_size(&mut self, muts: &[Mutation]) -> Res<()> {
        let partitions: BTreeSet<(&(String, String), &Vec<u8>)> =
            muts.iter().map(|m| (&m.table, &m.pk)).collect();
        if partitions.len() <= 1 {
            return Ok(());
        }
        let size: usize = muts
            .iter()
            .map(|m| {
                m.pk.len()
                    + m.ck.iter().flatten().map(Vec::len).sum::<usize>()
                    + match &m.kind {
                        MutationKind::Upsert { cells, .. } => cells
                            .iter()
                            .map(|(_, v)| v.as_ref().map_or(0, Vec::len))
                            .sum(),
                        MutationKind::Delete => 0,
                    }
            })
            .sum();
        let (warn, fail) = self.profile.batch_thresholds();
        if size > fail {
            return Err(CqlError::invalid("Batch too large"));
        }
        if size > warn && !self.profile.is_scylla() {
            let tables: BTreeSet<String> = muts
                .iter()
                .map(|m| format!("{}.{}", m.table.0, m.table.1))
                .collect();
            self.warnings.push(format!(
                "Batch for [{}] is of size {size}, exceeding specified threshold of {warn} by {}.",
                tables.into_iter().collect::<Vec<_>>().join(", "),
                size - warn
            ));
        }
        Ok(())
    }

    /// The write timestamp of a statement: its `USING TIMESTAMP`, the request's, or the clock.
    fn write_ts(&mut self, term: Option<&Term>, ex: &Exec) -> Res<i64> {
        match term {
            Some(term) => match bind(term, &CqlType::BigInt, ex.values)? {
                Bound::Val(Some(b)) if b.len() == 8 => {
                    let ts = i64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.check_future(ts)?;
                    Ok(ts)
                }
                _ => Err(CqlError::invalid("USING TIMESTAMP needs a bigint")),
            },
            None => Ok(ex.timestamp.unwrap_or_else(|| self.tick())),
        }
    }

    /// ScyllaDB's `restrict_future_timestamp`: a timestamp more than 3 days ahead is refused.
    fn check_future(&self, ts: i64) -> Res<()> {
        const THREE_DAYS_US: i64 = 3 * 24 * 3600 * 1_000_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        if self.profile.restricts_future_timestamps() && ts > now && ts - now > THREE_DAYS_US {
            return Err(CqlError::invalid(profile::FUTURE_TIMESTAMP));
        }
        Ok(())
    }

    fn plan_mutation(&mut self, p: &Parsed, ex: &Exec) -> Res<Mutation> {
        match &p.stmt {
            Stmt::Insert {
                table,
                columns,
                values,
                timestamp,
                ..
            } => {
                let ts = self.write_ts(timestamp.as_ref(), ex)?;
                let key = self.resolve(table, ex.keyspace)?;
                let t = &self.tables[&key];
                let mut cells = Vec::with_capacity(columns.len());
                for (c, term) in columns.iter().zip(values) {
                    let i = t.column(c)?;
                    match bind(term, &t.columns[i].ty, ex.values)? {
                        Bound::Unset => {}
                        Bound::Val(v) => cells.push((i, v)),
                    }
                }
                let get = |i: &usize| -> Res<Vec<u8>> {
                    cells
                        .iter()
                        .find(|(c, _)| c == i)
                        .and_then(|(_, v)| v.clone())
                        .ok_or_else(|| {
                            CqlError::invalid(format!(
                                "Invalid null or missing value for primary key column {}",
                                t.columns[*i].name
                            ))
                        })
                };
                let pk: Vec<Vec<u8>> = t.partition_key.iter().map(get).collect::<Res<_>>()?;
                let ck: Vec<Vec<u8>> = t.clustering.iter().map(get).collect::<Res<_>>()?;
                let pk_refs: Vec<&[u8]> = pk.iter().map(|v| v.as_slice()).collect();
                Ok(Mutation {
                    table: key,
                    pk: pk_bytes(&pk_refs),
                    ck: Some(ck),
                    kind: MutationKind::Upsert {
                        cells,
                        marker: true,
                    },
                    ts,
                })
            }
            Stmt::Update {
                table,
                sets,
                conds,
                timestamp,
                ..
            } => {
                let ts = self.write_ts(timestamp.as_ref(), ex)?;
                let key = self.resolve(table, ex.keyspace)?;
                let t = &self.tables[&key];
                let (pk, pk_vals, ck) = key_of(t, conds, ex)?;
                let Some(ck) = ck.filter(|c| c.len() == t.clustering.len()) else {
                    return Err(CqlError::invalid(
                        "cql-test-server updates one row: give every key column with =",
                    ));
                };
                let mut cells: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
                for (c, term) in sets {
                    let i = t.column(c)?;
                    if t.is_key(i) {
                        return Err(CqlError::invalid(format!(
                            "PRIMARY KEY part {c} found in SET part"
                        )));
                    }
                    if let Bound::Val(v) = bind(term, &t.columns[i].ty, ex.values)? {
                        cells.push((i, v));
                    }
                }
                for (i, v) in t.partition_key.iter().zip(pk_vals) {
                    cells.push((*i, Some(v)));
                }
                for (i, v) in t.clustering.iter().zip(&ck) {
                    cells.push((*i, Some(v.clone())));
                }
                Ok(Mutation {
                    table: key,
                    pk,
                    ck: Some(ck),
                    kind: MutationKind::Upsert {
                        cells,
                        marker: false,
                    },
                    ts,
                })
            }
            Stmt::Delete {
                table,
                conds,
                timestamp,
                ..
            } => {
                let ts = self.write_ts(timestamp.as_ref(), ex)?;
                let key = self.resolve(table, ex.keyspace)?;
                let t = &self.tables[&key];
                let (pk, _, ck) = key_of(t, conds, ex)?;
                let ck = match ck {
                    Some(c) if c.len() == t.clustering.len() => Some(c),
                    Some(_) => {
                        return Err(CqlError::invalid(
                            "cql-test-server deletes a whole partition or one row",
                        ));
                    }
                    None if t.clustering.is_empty() => Some(Vec::new()),
                    None => None,
                };
                Ok(Mutation {
                    table: key,
                    pk,
                    ck,
                    kind: MutationKind::Delete,
                    ts,
                })
            }
            other => Err(CqlError::invalid(format!("not a mutation: {other:?}"))),
        }
    }

    fn apply(&mut self, m: Mutation) {
        let t = self
            .tables
            .get_mut(&m.table)
            .expect("planned against this table");
        let width = t.columns.len();
        let part = t.partitions.entry(m.pk).or_default();
        match (m.kind, m.ck) {
            (MutationKind::Upsert { cells, marker }, Some(vals)) => {
                let ck = CkKey {
                    vals,
                    spec: t.spec.clone(),
                };
                let row = part.rows.entry(ck).or_insert_with(|| StoredRow::new(width));
                if marker {
                    row.marker = row.marker.max(Some(m.ts));
                }
                for (i, v) in cells {
                    merge_cell(&mut row.cells[i], Cell { ts: m.ts, value: v });
                }
            }
            (MutationKind::Upsert { .. }, None) => unreachable!("writes carry the clustering key"),
            (MutationKind::Delete, None) => part.tomb = part.tomb.max(Some(m.ts)),
            (MutationKind::Delete, Some(vals)) => {
                let ck = CkKey {
                    vals,
                    spec: t.spec.clone(),
                };
                let row = part.rows.entry(ck).or_insert_with(|| StoredRow::new(width));
                row.tomb = row.tomb.max(Some(m.ts));
            }
        }
    }

    /// A lightweight transaction: plan the write, read the row it targets, and apply the
    /// write (at the server's timestamp) only if `check` holds. Atomic: the store is locked.
    fn lightweight(
        &mut self,
        p: &Parsed,
        ex: &Exec,
        check: impl Fn(Option<&Row>, &Table, &[Value]) -> Res<bool>,
    ) -> Res<Outcome> {
        let serial = Exec {
            timestamp: None,
            ..*ex
        };
        let mut m = self.plan_mutation(p, &serial)?;
        self.paxos_allowed(&m.table)?;
        m.ts = self.tick();
        let t = &self.tables[&m.table];
        let ck = CkKey {
            vals: m.ck.clone().unwrap_or_default(),
            spec: t.spec.clone(),
        };
        let current = t
            .partitions
            .get(&m.pk)
            .and_then(|part| part.rows.get(&ck).and_then(|r| t.visible(part, r)));
        let applied = check(current.as_ref(), t, ex.values)?;
        let (keyspace, table) = (t.keyspace.clone(), t.name.clone());
        if applied {
            self.apply(m);
        }
        Ok(Outcome::Rows(RowsResult {
            keyspace,
            table,
            columns: vec![applied_column()],
            rows: vec![vec![Some(vec![applied as u8])]],
            paging_state: None,
        }))
    }

    /// Paxos (lightweight transactions, SERIAL reads) on `table`: refused in a tablet keyspace
    /// before ScyllaDB 2025.4 (`storage_proxy::cas`).
    fn paxos_allowed(&self, (ks, table): &(String, String)) -> Res<()> {
        if self.uses_tablets(ks) && !self.profile.lwt_on_tablets() {
            return Err(CqlError::invalid(profile::lwt_refused(ks, table)));
        }
        Ok(())
    }

    fn select(&self, p: &Parsed, ex: &Exec) -> Res<Outcome> {
        let Stmt::Select {
            table,
            projection,
            conds,
            limit,
            distinct,
            timeout,
        } = &p.stmt
        else {
            unreachable!()
        };
        if *timeout && !self.profile.is_scylla() {
            return Err(CqlError::new(
                code::SYNTAX_ERROR,
                "line 1: no viable alternative at input 'USING'",
            ));
        }
        let key = self.resolve(table, ex.keyspace)?;
        if ex.serial {
            self.paxos_allowed(&key)?;
        }
        let t = &self.tables[&key];
        let out_cols = projected(t, projection)?;
        let out_idx: Vec<usize> = out_cols
            .iter()
            .map(|c| t.column(&c.name))
            .collect::<Res<_>>()?;
        if *distinct && !out_idx.iter().all(|i| t.partition_key.contains(i)) {
            return Err(CqlError::invalid(
                "SELECT DISTINCT queries must only request partition key columns",
            ));
        }
        let limit = match limit {
            None => None,
            Some(term) => match bind(term, &CqlType::Int, ex.values)? {
                Bound::Val(Some(b)) if b.len() == 4 => {
                    Some(i32::from_be_bytes(b.try_into().expect("4 bytes")).max(0) as usize)
                }
                _ => return Err(CqlError::invalid("LIMIT must be a positive int")),
            },
        };

        // Partitions: the listed keys when every partition-key column is restricted by = or
        // IN, otherwise all of them (conditions then filter rows).
        let mut filters: Vec<(usize, Op, Vec<Vec<u8>>)> = Vec::new();
        let mut pk_choices: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut pk_restricted = true;
        for c in conds {
            let i = t.column(&c.column)?;
            let ty = &t.columns[i].ty;
            let vals: Vec<Vec<u8>> = match (&c.rhs, c.op) {
                (Rhs::One(term), Op::In) => {
                    match bind(term, &CqlType::List(Box::new(ty.clone())), ex.values)? {
                        Bound::Val(Some(b)) => split_collection(&b)?,
                        _ => {
                            return Err(CqlError::invalid(format!(
                                "Invalid null value for {}",
                                c.column
                            )));
                        }
                    }
                }
                (Rhs::One(term), _) => match bind(term, ty, ex.values)? {
                    Bound::Val(Some(b)) => vec![b],
                    _ => {
                        return Err(CqlError::invalid(format!(
                            "Invalid null value in condition for column {}",
                            c.column
                        )));
                    }
                },
                (Rhs::List(terms), _) => terms
                    .iter()
                    .map(|term| match bind(term, ty, ex.values)? {
                        Bound::Val(Some(b)) => Ok(b),
                        _ => Err(CqlError::invalid(format!(
                            "Invalid null value for {}",
                            c.column
                        ))),
                    })
                    .collect::<Res<_>>()?,
            };
            filters.push((i, c.op, vals));
        }
        for i in &t.partition_key {
            match filters
                .iter()
                .find(|(c, op, _)| c == i && matches!(op, Op::Eq | Op::In))
            {
                Some((_, _, vals)) => pk_choices.push(vals.clone()),
                None => pk_restricted = false,
            }
        }
        let mut keys: Vec<Vec<u8>> = if pk_restricted {
            let mut combos: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
            for choice in &pk_choices {
                combos = combos
                    .into_iter()
                    .flat_map(|prefix| {
                        choice.iter().map(move |v| {
                            let mut p = prefix.clone();
                            p.push(v.clone());
                            p
                        })
                    })
                    .collect();
            }
            combos
                .iter()
                .map(|c| pk_bytes(&c.iter().map(|v| v.as_slice()).collect::<Vec<_>>()))
                .collect()
        } else {
            Vec::new()
        };
        keys.sort();
        keys.dedup();

        // Resume after the last row of the previous page.
        let (resume, mut returned) = match ex.paging_state {
            Some(s) => decode_paging_state(s)?,
            None => (None, 0),
        };
        let matches = |row: &Row| {
            filters.iter().all(|(i, op, vals)| {
                let Some(v) = &row[*i] else { return false };
                let ty = &t.columns[*i].ty;
                vals.iter().any(|want| {
                    let c = types::compare(ty, v, want);
                    match op {
                        Op::Eq | Op::In => c == Ordering::Equal,
                        Op::Lt => c == Ordering::Less,
                        Op::Le => c != Ordering::Greater,
                        Op::Gt => c == Ordering::Greater,
                        Op::Ge => c != Ordering::Less,
                    }
                })
            })
        };
        let page = match ex.page_size {
            Some(n) if n > 0 => n as usize,
            _ => usize::MAX,
        };
        let count_only = matches!(projection, Projection::Count);
        let mut rows = Vec::new();
        let mut count = 0i64;
        let mut last: Option<(Vec<u8>, Vec<Vec<u8>>)> = None;
        let mut more = false;
        let parts: Box<dyn Iterator<Item = (&Vec<u8>, &Partition)>> = if pk_restricted {
            Box::new(keys.iter().filter_map(|k| t.partitions.get_key_value(k)))
        } else {
            Box::new(t.partitions.iter())
        };
        'outer: for (pk, part) in parts {
            if let Some((rpk, _)) = &resume
                && (pk < rpk || (*distinct && pk == rpk))
            {
                continue;
            }
            for (ck, stored) in &part.rows {
                let Some(row) = t.visible(part, stored) else {
                    continue;
                };
                let row = &row;
                if let Some((rpk, rck)) = &resume
                    && pk == rpk
                {
                    let r = CkKey {
                        vals: rck.clone(),
                        spec: t.spec.clone(),
                    };
                    if ck <= &r {
                        continue;
                    }
                }
                if !matches(row) {
                    continue;
                }
                if count_only {
                    count += 1;
                    continue;
                }
                if limit.is_some_and(|l| returned >= l) {
                    break 'outer;
                }
                if rows.len() == page {
                    more = true;
                    break 'outer;
                }
                rows.push(out_idx.iter().map(|i| row[*i].clone()).collect());
                returned += 1;
                last = Some((pk.clone(), ck.vals.clone()));
                if *distinct {
                    // One row per partition: its key columns.
                    break;
                }
            }
        }
        if count_only {
            rows.push(vec![Some(count.to_be_bytes().to_vec())]);
        }
        let paging_state = if more {
            let (pk, ck) = last.expect("a full page has a last row");
            Some(encode_paging_state(&pk, &ck, returned))
        } else {
            None
        };
        Ok(Outcome::Rows(RowsResult {
            keyspace: t.keyspace.clone(),
            table: t.name.clone(),
            columns: out_cols,
            rows,
            paging_state,
        }))
    }
}

/// The `[applied]` column of a lightweight transaction's result.
fn applied_column() -> Column {
    Column {
        name: "[applied]".into(),
        ty: CqlType::Boolean,
    }
}

/// The key a WHERE clause names by equality: the partition key (bytes and column values)
/// and the clustering values given (None: none).
type KeyOf = (Vec<u8>, Vec<Vec<u8>>, Option<Vec<Vec<u8>>>);

fn key_of(t: &Table, conds: &[Cond], ex: &Exec) -> Res<KeyOf> {
    let eq = |i: &usize| -> Res<Option<Vec<u8>>> {
        let name = &t.columns[*i].name;
        let Some(c) = conds.iter().find(|c| &c.column == name) else {
            return Ok(None);
        };
        match (&c.rhs, c.op) {
            (Rhs::One(term), Op::Eq) => match bind(term, &t.columns[*i].ty, ex.values)? {
                Bound::Val(Some(v)) => Ok(Some(v)),
                _ => Err(CqlError::invalid(format!("Invalid null value for {name}"))),
            },
            _ => Err(CqlError::invalid(
                "cql-test-server writes and deletes only by equality on key columns",
            )),
        }
    };
    let pk: Vec<Vec<u8>> = t
        .partition_key
        .iter()
        .map(|i| {
            eq(i)?.ok_or_else(|| {
                CqlError::invalid(format!(
                    "Some partition key parts are missing: {}",
                    t.columns[*i].name
                ))
            })
        })
        .collect::<Res<_>>()?;
    let mut ck = Vec::new();
    for i in &t.clustering {
        match eq(i)? {
            Some(v) => ck.push(v),
            None => break,
        }
    }
    let pk_refs: Vec<&[u8]> = pk.iter().map(|v| v.as_slice()).collect();
    let bytes = pk_bytes(&pk_refs);
    // No clustering columns: the partition is the row.
    let given = !ck.is_empty() || t.clustering.is_empty();
    Ok((bytes, pk, given.then_some(ck)))
}

/// Whether a row meets the conditions of an `IF` clause (a null never does).
fn conds_hold(t: &Table, conds: &[Cond], row: &Row, values: &[Value]) -> Res<bool> {
    for c in conds {
        let i = t.column(&c.column)?;
        let ty = &t.columns[i].ty;
        let want: Vec<Vec<u8>> = match &c.rhs {
            Rhs::One(term) => match bind(term, ty, values)? {
                Bound::Val(Some(b)) => vec![b],
                _ => return Ok(false),
            },
            Rhs::List(terms) => terms
                .iter()
                .filter_map(|term| match bind(term, ty, values) {
                    Ok(Bound::Val(Some(b))) => Some(Ok(b)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Res<_>>()?,
        };
        let Some(v) = &row[i] else { return Ok(false) };
        let ok = want.iter().any(|w| {
            let o = types::compare(ty, v, w);
            match c.op {
                Op::Eq | Op::In => o == Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                Op::Ge => o != Ordering::Less,
            }
        });
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn pk_markers(t: &Table, term_of: impl Fn(&str) -> Option<Term>) -> Vec<u16> {
    let mut out = Vec::new();
    for i in &t.partition_key {
        match term_of(&t.columns[*i].name) {
            Some(Term::Marker(m)) => out.push(m as u16),
            _ => return Vec::new(),
        }
    }
    out
}

fn projected(t: &Table, projection: &Projection) -> Res<Vec<Column>> {
    Ok(match projection {
        Projection::Star => {
            // Cassandra's order: partition key, clustering, then the rest by name.
            let mut idx: Vec<usize> = t.partition_key.clone();
            idx.extend(&t.clustering);
            let mut rest: Vec<usize> = (0..t.columns.len()).filter(|i| !idx.contains(i)).collect();
            rest.sort_by(|a, b| t.columns[*a].name.cmp(&t.columns[*b].name));
            idx.extend(rest);
            idx.into_iter().map(|i| t.columns[i].clone()).collect()
        }
        Projection::Count => vec![Column {
            name: "count".into(),
            ty: CqlType::BigInt,
        }],
        Projection::Columns(names) => names
            .iter()
            .map(|n| t.column(n).map(|i| t.columns[i].clone()))
            .collect::<Res<_>>()?,
    })
}

enum Bound {
    Unset,
    Val(Option<Vec<u8>>),
}

fn bind(term: &Term, ty: &CqlType, values: &[Value]) -> Res<Bound> {
    match term {
        Term::Lit(l) => Ok(Bound::Val(
            types::literal_to_bytes(l, ty).map_err(CqlError::invalid)?,
        )),
        Term::Marker(i) => match values.get(*i) {
            None => Err(CqlError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                i + 1,
                values.len()
            ))),
            Some(Value::Unset) => Ok(Bound::Unset),
            Some(Value::Null) => Ok(Bound::Val(None)),
            Some(Value::Bytes(b)) => {
                ty.validate(b).map_err(|e| {
                    CqlError::invalid(format!("Invalid value for bind marker {i}: {e}"))
                })?;
                Ok(Bound::Val(Some(b.clone())))
            }
        },
    }
}

fn split_collection(b: &[u8]) -> Res<Vec<Vec<u8>>> {
    let mut r = crate::frame::Reader::new(b);
    let n = r
        .i32()
        .map_err(|e| CqlError::invalid(format!("bad collection: {}", e.0)))?;
    (0..n)
        .map(|_| match r.bytes() {
            Ok(Some(v)) => Ok(v),
            _ => Err(CqlError::invalid("bad collection element")),
        })
        .collect()
}

fn encode_paging_state(pk: &[u8], ck: &[Vec<u8>], returned: usize) -> Vec<u8> {
    let mut w = crate::frame::Writer::default();
    w.bytes(Some(pk));
    w.i32(ck.len() as i32);
    for v in ck {
        w.bytes(Some(v));
    }
    w.i32(returned as i32);
    w.buf
}

type Resume = Option<(Vec<u8>, Vec<Vec<u8>>)>;

fn decode_paging_state(s: &[u8]) -> Res<(Resume, usize)> {
    let bad = |_| CqlError::new(code::PROTOCOL_ERROR, "invalid paging state");
    let mut r = crate::frame::Reader::new(s);
    let pk = r.bytes().map_err(bad)?.unwrap_or_default();
    let n = r.i32().map_err(bad)?;
    let mut ck = Vec::new();
    for _ in 0..n {
        ck.push(r.bytes().map_err(bad)?.unwrap_or_default());
    }
    let returned = r.i32().map_err(bad)?.max(0) as usize;
    Ok((Some((pk, ck)), returned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        s: &mut Store,
        q: &str,
        values: &[Value],
        page: Option<i32>,
        state: Option<&[u8]>,
    ) -> Res<Outcome> {
        let p = cql::parse(q).map_err(CqlError::invalid)?;
        s.execute(
            &p,
            &Exec {
                keyspace: Some("ks"),
                values,
                page_size: page,
                paging_state: state,
                timestamp: None,
                serial: false,
            },
        )
    }

    fn rows(o: Outcome) -> RowsResult {
        match o {
            Outcome::Rows(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clustering_desc_range_paging_and_upsert() {
        let mut s = Store::new("127.0.0.1".parse().unwrap(), [1; 16], Profile::Cassandra5_0);
        run(&mut s, "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[], None, None).unwrap();
        run(&mut s, "CREATE TABLE t (k bigint, d date, v int, PRIMARY KEY ((k), d)) WITH CLUSTERING ORDER BY (d DESC)", &[], None, None).unwrap();
        for day in 1..=9 {
            run(
                &mut s,
                &format!("INSERT INTO t (k, d, v) VALUES (7, '2024-01-0{day}', {day})"),
                &[],
                None,
                None,
            )
            .unwrap();
        }
        run(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-05', 50)",
            &[],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            s.table("ks", "t").unwrap().row_count(),
            9,
            "upsert, not a new row"
        );
        let q = "SELECT v FROM t WHERE k = 7 AND d >= '2024-01-03' AND d <= '2024-01-07'";
        let first = rows(run(&mut s, q, &[], Some(2), None).unwrap());
        let v = |r: &RowsResult| -> Vec<i32> {
            r.rows
                .iter()
                .map(|c| i32::from_be_bytes(c[0].clone().unwrap().try_into().unwrap()))
                .collect()
        };
        assert_eq!(v(&first), [7, 6]);
        let state = first.paging_state.clone().unwrap();
        let second = rows(run(&mut s, q, &[], Some(2), Some(&state)).unwrap());
        assert_eq!(v(&second), [50, 4]);
        let third = rows(run(&mut s, q, &[], Some(2), second.paging_state.as_deref()).unwrap());
        assert_eq!(v(&third), [3]);
        assert!(third.paging_state.is_none());
    }

    #[test]
    fn unknown_tables_and_columns_are_invalid() {
        let mut s = Store::new("127.0.0.1".parse().unwrap(), [1; 16], Profile::Cassandra5_0);
        let e = run(
            &mut s,
            "SELECT x FROM system_schema.scylla_tables",
            &[],
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID);
        let e = run(&mut s, "SELECT nope FROM system.local", &[], None, None).unwrap_err();
        assert!(
            e.message.contains("Undefined column name nope"),
            "{}",
            e.message
        );
    }

    fn int_of(o: Outcome) -> Vec<Option<i32>> {
        rows(o)
            .rows
            .iter()
            .map(|c| {
                c[0].clone()
                    .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            })
            .collect()
    }

    fn setup() -> Store {
        let mut s = Store::new("127.0.0.1".parse().unwrap(), [1; 16], Profile::Cassandra5_0);
        run(&mut s, "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[], None, None).unwrap();
        run(
            &mut s,
            "CREATE TABLE t (k bigint, d date, v int, PRIMARY KEY ((k), d))",
            &[],
            None,
            None,
        )
        .unwrap();
        run(
            &mut s,
            "CREATE TABLE p (name text PRIMARY KEY, id text, v bigint)",
            &[],
            None,
            None,
        )
        .unwrap();
        s
    }

    #[test]
    fn the_later_timestamp_wins_whatever_the_arrival_order() {
        let mut s = setup();
        let q = |s: &mut Store, q: &str| run(s, q, &[], None, None).unwrap();
        let v =
            |s: &mut Store| int_of(run(s, "SELECT v FROM t WHERE k = 7", &[], None, None).unwrap());
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-01', 2) USING TIMESTAMP 20",
        );
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-01', 1) USING TIMESTAMP 10",
        );
        assert_eq!(v(&mut s), [Some(2)], "an older write arriving later loses");
        q(
            &mut s,
            "DELETE FROM t USING TIMESTAMP 15 WHERE k = 7 AND d = '2024-01-01'",
        );
        assert_eq!(v(&mut s), [Some(2)], "an older delete loses");
        q(
            &mut s,
            "DELETE FROM t USING TIMESTAMP 25 WHERE k = 7 AND d = '2024-01-01'",
        );
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-01', 3) USING TIMESTAMP 22",
        );
        assert_eq!(
            v(&mut s),
            Vec::<Option<i32>>::new(),
            "the delete shadows older writes"
        );
        assert_eq!(s.table("ks", "t").unwrap().row_count(), 0);
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-01', 4) USING TIMESTAMP 30",
        );
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-02', 5) USING TIMESTAMP 31",
        );
        assert_eq!(v(&mut s), [Some(4), Some(5)]);
        // A partition delete shadows every older row, also one written after it.
        q(&mut s, "DELETE FROM t USING TIMESTAMP 40 WHERE k = 7");
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-03', 6) USING TIMESTAMP 35",
        );
        assert!(v(&mut s).is_empty());
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (7, '2024-01-03', 7) USING TIMESTAMP 41",
        );
        assert_eq!(v(&mut s), [Some(7)]);
        q(
            &mut s,
            "INSERT INTO t (k, d, v) VALUES (9, '2024-01-03', 8)",
        );
        let ks = rows(run(&mut s, "SELECT DISTINCT k FROM t", &[], Some(1), None).unwrap());
        assert_eq!(ks.rows.len(), 1);
        let rest = rows(
            run(
                &mut s,
                "SELECT DISTINCT k FROM t",
                &[],
                Some(5),
                ks.paging_state.as_deref(),
            )
            .unwrap(),
        );
        assert_eq!(rest.rows.len(), 1, "each partition once, across pages");
        assert_ne!(ks.rows[0], rest.rows[0]);
        assert!(run(&mut s, "SELECT DISTINCT v FROM t", &[], None, None).is_err());
    }

    #[test]
    fn lightweight_transactions_apply_only_when_their_condition_holds() {
        let mut s = setup();
        let applied = |o: Outcome| rows(o).rows[0][0] == Some(vec![1]);
        let q = |s: &mut Store, q: &str| run(s, q, &[], None, None).unwrap();
        assert!(applied(q(
            &mut s,
            "INSERT INTO p (name, id, v) VALUES ('a', 'x', -1) IF NOT EXISTS"
        )));
        assert!(!applied(q(
            &mut s,
            "INSERT INTO p (name, id, v) VALUES ('a', 'y', -1) IF NOT EXISTS"
        )));
        assert!(applied(q(
            &mut s,
            "UPDATE p SET v = 5 WHERE name = 'a' IF id = 'x' AND v < 5"
        )));
        assert!(
            !applied(q(
                &mut s,
                "UPDATE p SET v = 3 WHERE name = 'a' IF id = 'x' AND v < 3"
            )),
            "never backwards"
        );
        assert!(
            !applied(q(&mut s, "UPDATE p SET v = 9 WHERE name = 'a' IF id = 'y'")),
            "another identity"
        );
        assert!(
            !applied(q(&mut s, "UPDATE p SET v = 9 WHERE name = 'b' IF id = 'x'")),
            "no row"
        );
        let v = rows(q(&mut s, "SELECT v FROM p WHERE name = 'a'"));
        assert_eq!(v.rows[0][0], Some(5i64.to_be_bytes().to_vec()));
        assert!(applied(q(
            &mut s,
            "DELETE FROM p WHERE name = 'a' IF EXISTS"
        )));
        assert!(!applied(q(
            &mut s,
            "DELETE FROM p WHERE name = 'a' IF EXISTS"
        )));
    }
}

/// Each profile's documented behaviours for our statements (the conformance table of
/// `README.md`, one assertion per row).
#[cfg(test)]
mod conformance {
    use super::*;

    const NTS: &str = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";

    fn store(p: Profile) -> Store {
        Store::new("127.0.0.1".parse().unwrap(), [1; 16], p)
    }

    fn exec(s: &mut Store, q: &str) -> Res<Outcome> {
        let p = cql::parse(q).map_err(|e| CqlError::new(code::SYNTAX_ERROR, e))?;
        s.execute(
            &p,
            &Exec {
                keyspace: Some("ks"),
                values: &[],
                page_size: None,
                paging_state: None,
                timestamp: None,
                serial: false,
            },
        )
    }

    fn err(r: Res<Outcome>) -> (i32, String) {
        let e = r.expect_err("an error");
        (e.code, e.message)
    }

    fn one_text(s: &mut Store, q: &str) -> String {
        match exec(s, q).unwrap() {
            Outcome::Rows(r) => String::from_utf8(r.rows[0][0].clone().unwrap()).unwrap(),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn tablets_by_default_and_the_tablets_option() {
        for p in Profile::ALL {
            let mut s = store(p);
            exec(
                &mut s,
                &format!("CREATE KEYSPACE ks WITH replication = {NTS}"),
            )
            .unwrap();
            assert_eq!(s.uses_tablets("ks"), p.has_tablets(), "{p:?}");
            let warned = !s.take_warnings().is_empty();
            assert_eq!(warned, p.has_tablets(), "{p:?}: the tablets warning");
            let opt = exec(
                &mut s,
                &format!(
                    "CREATE KEYSPACE IF NOT EXISTS ks2 WITH replication = {NTS} AND tablets = {{'enabled': false}}"
                ),
            );
            match p {
                Profile::Scylla5_4 | Profile::Cassandra4_1 | Profile::Cassandra5_0 => {
                    assert_eq!(
                        err(opt),
                        (code::SYNTAX_ERROR, "Unknown property 'tablets'".into())
                    )
                }
                Profile::Scylla2025_1Enforced => {
                    assert_eq!(
                        err(opt),
                        (code::CONFIG_ERROR, profile::TABLETS_ENFORCED.into())
                    )
                }
                _ => {
                    opt.unwrap();
                    assert!(!s.uses_tablets("ks2"), "{p:?}: opted out");
                }
            }
            // SimpleStrategy keyspaces never get tablets (before 2026.2).
            exec(&mut s, "CREATE KEYSPACE ks3 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").unwrap();
            assert!(!s.uses_tablets("ks3"), "{p:?}");
        }
    }

    #[test]
    fn lightweight_transactions_on_tablets_are_refused_until_2025_4() {
        for p in Profile::ALL {
            let mut s = store(p);
            exec(
                &mut s,
                &format!("CREATE KEYSPACE ks WITH replication = {NTS}"),
            )
            .unwrap();
            exec(&mut s, "CREATE TABLE t (k int PRIMARY KEY, v int)").unwrap();
            let r = exec(&mut s, "INSERT INTO t (k, v) VALUES (1, 1) IF NOT EXISTS");
            // Prepared fine either way: the refusal is at execute time.
            let parsed = cql::parse("UPDATE t SET v = 2 WHERE k = 1 IF v = 1").unwrap();
            s.prepare(&parsed, Some("ks")).unwrap();
            if p.has_tablets() && !p.lwt_on_tablets() {
                assert_eq!(
                    err(r),
                    (
                        code::INVALID,
                        "Cannot use LightWeight Transactions for table ks.t: LWT is not yet supported with tablets".into()
                    ),
                    "{p:?}"
                );
            } else {
                r.unwrap();
            }
        }
    }

    #[test]
    fn what_tells_the_servers_apart() {
        for p in Profile::ALL {
            let mut s = store(p);
            assert_eq!(
                one_text(&mut s, "SELECT release_version FROM system.local"),
                p.release_version()
            );
            let versions = exec(&mut s, "SELECT version FROM system.versions");
            let scylla_ks = exec(
                &mut s,
                "SELECT keyspace_name FROM system_schema.scylla_keyspaces",
            );
            let peers_v2 = exec(&mut s, "SELECT peer FROM system.peers_v2");
            if p.is_scylla() {
                assert_eq!(
                    one_text(&mut s, "SELECT version FROM system.versions"),
                    p.scylla_version().unwrap()
                );
                scylla_ks.unwrap();
                assert_eq!(err(peers_v2).1, "unconfigured table peers_v2");
            } else {
                assert_eq!(err(versions).1, "table versions does not exist");
                assert_eq!(err(scylla_ks).1, "table scylla_keyspaces does not exist");
                peers_v2.unwrap();
            }
            let keys: Vec<&str> = p.supported().iter().map(|(k, _)| *k).collect();
            assert_eq!(keys.contains(&"SCYLLA_SHARD"), p.is_scylla(), "{p:?}");
            assert_eq!(
                keys.contains(&"TABLETS_ROUTING_V1"),
                p.has_tablets(),
                "{p:?}"
            );
        }
    }

    #[test]
    fn describe_keyspace_shows_the_tablets_setting_as_each_server_does() {
        let ddl = |p: Profile, opt: &str| {
            let mut s = store(p);
            exec(
                &mut s,
                &format!("CREATE KEYSPACE ks WITH replication = {NTS}{opt}"),
            )
            .unwrap();
            match exec(&mut s, "DESCRIBE KEYSPACE ks").unwrap() {
                Outcome::Rows(r) => String::from_utf8(r.rows[0][3].clone().unwrap()).unwrap(),
                o => panic!("{o:?}"),
            }
        };
        let nts =
            "'class': 'org.apache.cassandra.locator.NetworkTopologyStrategy', 'datacenter1': '1'";
        assert_eq!(
            ddl(Profile::Scylla5_4, ""),
            format!("CREATE KEYSPACE ks WITH replication = {{{nts}}} AND durable_writes = true;")
        );
        assert_eq!(
            ddl(Profile::Scylla6_2, ""),
            format!("CREATE KEYSPACE ks WITH replication = {{{nts}}} AND durable_writes = true;")
        );
        assert!(
            ddl(Profile::Scylla6_2, " AND tablets = {'enabled': false}")
                .ends_with("AND tablets = {'enabled': false};")
        );
        assert!(ddl(Profile::Scylla2025_1, "").ends_with("AND tablets = {'enabled': true};"));
        assert_eq!(
            ddl(Profile::Cassandra5_0, ""),
            "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': '1'}  AND durable_writes = true;"
        );
    }

    #[test]
    fn future_timestamps_names_and_batch_sizes() {
        let far = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64)
            + 4 * 24 * 3600 * 1_000_000;
        for p in Profile::ALL {
            let mut s = store(p);
            exec(&mut s, "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").unwrap();
            exec(&mut s, "CREATE TABLE t (k int PRIMARY KEY, v text)").unwrap();
            let r = exec(
                &mut s,
                &format!("INSERT INTO t (k, v) VALUES (1, 'x') USING TIMESTAMP {far}"),
            );
            if p.restricts_future_timestamps() {
                assert_eq!(err(r).1, profile::FUTURE_TIMESTAMP);
            } else {
                r.unwrap();
            }
            let bad = exec(
                &mut s,
                "CREATE KEYSPACE \"my-ks\" WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            );
            let (c, m) = err(bad);
            assert_eq!(c, code::INVALID);
            assert!(m.contains("my-ks"), "{m}");
            // A batch over two partitions beyond the fail threshold.
            let (_, fail) = p.batch_thresholds();
            let big = "x".repeat(fail / 2 + 10);
            let items: Vec<(Arc<Parsed>, Vec<Value>)> = (0..2)
                .map(|k| {
                    (
                        Arc::new(
                            cql::parse(&format!("INSERT INTO t (k, v) VALUES ({k}, '{big}')"))
                                .unwrap(),
                        ),
                        Vec::new(),
                    )
                })
                .collect();
            let e = s.execute_batch(&items, Some("ks"), None).unwrap_err();
            assert_eq!(e.message, "Batch too large", "{p:?}");
        }
    }
}
