//! Server profiles: which real server the stand-in behaves like, for the behaviours our
//! statements touch. Every fact here is taken from the server's source or documentation at a
//! release tag; `README.md` ("Conformance") lists each with its source. What no profile
//! emulates (replication, Paxos, shards, TTL, compression, protocol v5) is listed there too.

/// A server and version the stand-in emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// ScyllaDB 5.4: vnodes; the `tablets` keyspace option does not exist.
    Scylla5_4,
    /// ScyllaDB 6.0–6.2 (the compose file's `scylladb/scylla:6.2`): tablets by default for
    /// NetworkTopologyStrategy keyspaces, and no LWT on them.
    Scylla6_2,
    /// ScyllaDB 2025.1–2025.3: as 6.2 (`tablets_mode_for_new_keyspaces: enabled`).
    Scylla2025_1,
    /// ScyllaDB 2025.1+ with `tablets_mode_for_new_keyspaces: enforced`: tablets cannot be
    /// disabled for a keyspace.
    Scylla2025_1Enforced,
    /// ScyllaDB 2025.4: the first with LWT on tablets.
    Scylla2025_4,
    /// Apache Cassandra 4.1: no tablets; LWT works.
    Cassandra4_1,
    /// Apache Cassandra 5.0.
    Cassandra5_0,
}

impl Default for Profile {
    /// The compose file's server.
    fn default() -> Self {
        Profile::Scylla6_2
    }
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 7] = [
        Profile::Scylla5_4,
        Profile::Scylla6_2,
        Profile::Scylla2025_1,
        Profile::Scylla2025_1Enforced,
        Profile::Scylla2025_4,
        Profile::Cassandra4_1,
        Profile::Cassandra5_0,
    ];

    /// Its name (`--emulate`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Scylla5_4 => "scylla-5.4",
            Profile::Scylla6_2 => "scylla-6.2",
            Profile::Scylla2025_1 => "scylla-2025.1",
            Profile::Scylla2025_1Enforced => "scylla-2025.1-enforced",
            Profile::Scylla2025_4 => "scylla-2025.4",
            Profile::Cassandra4_1 => "cassandra-4.1",
            Profile::Cassandra5_0 => "cassandra-5.0",
        }
    }

    /// The profile named `s`.
    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// A ScyllaDB (not a Cassandra).
    pub fn is_scylla(self) -> bool {
        !matches!(self, Profile::Cassandra4_1 | Profile::Cassandra5_0)
    }

    /// `system.local.release_version`: every ScyllaDB says `3.0.8` (`version.hh`).
    pub fn release_version(self) -> &'static str {
        match self {
            Profile::Cassandra4_1 => "4.1.7",
            Profile::Cassandra5_0 => "5.0.2",
            _ => "3.0.8",
        }
    }

    /// `system.local.cql_version` and SUPPORTED's `CQL_VERSION`.
    pub fn cql_version(self) -> &'static str {
        match self {
            Profile::Cassandra4_1 => "3.4.6",
            Profile::Cassandra5_0 => "3.4.7",
            _ => "3.3.1",
        }
    }

    /// `system.versions.version` (ScyllaDB only: its real version).
    pub fn scylla_version(self) -> Option<&'static str> {
        Some(match self {
            Profile::Scylla5_4 => "5.4.9-0.20240703.fdcbbb85adcd",
            Profile::Scylla6_2 => "6.2.3-0.20250119.bff9ddde1283",
            Profile::Scylla2025_1 | Profile::Scylla2025_1Enforced => {
                "2025.1.14-0.20251104.103b84070f3b"
            }
            Profile::Scylla2025_4 => "2025.4.10-0.20260611.99f4121cd8e1",
            Profile::Cassandra4_1 | Profile::Cassandra5_0 => return None,
        })
    }

    /// Whether the keyspace option `tablets = {...}` exists (ScyllaDB 6.0+).
    pub fn has_tablets(self) -> bool {
        !matches!(
            self,
            Profile::Scylla5_4 | Profile::Cassandra4_1 | Profile::Cassandra5_0
        )
    }

    /// Whether tablets cannot be disabled for a keyspace.
    pub fn tablets_enforced(self) -> bool {
        self == Profile::Scylla2025_1Enforced
    }

    /// Whether lightweight transactions work on tables of tablet keyspaces (2025.4+).
    pub fn lwt_on_tablets(self) -> bool {
        self == Profile::Scylla2025_4
    }

    /// The longest keyspace name (48; 192 bytes from ScyllaDB 2025.2).
    pub fn keyspace_name_max(self) -> usize {
        if self == Profile::Scylla2025_4 {
            192
        } else {
            48
        }
    }

    /// The error for a keyspace name that is not `\w+` of at most the maximum length.
    pub fn bad_keyspace_name(self, name: &str) -> Option<String> {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let max = self.keyspace_name_max();
        if self.is_scylla() {
            if !valid {
                return Some(format!("\"{name}\" is not a valid keyspace name"));
            }
            if name.len() > max {
                return Some(format!(
                    "Keyspace names shouldn't be more than {max} characters long (got \"{name}\")"
                ));
            }
            return None;
        }
        (!valid || name.len() > max).then(|| {
            format!(
                "Keyspace name must not be empty, more than {max} characters long, or contain \
                 non-alphanumeric-underscore characters (got '{name}')"
            )
        })
    }

    /// The message for a table that does not exist.
    pub fn unknown_table(self, table: &str) -> String {
        if self.is_scylla() {
            format!("unconfigured table {table}")
        } else {
            format!("table {table} does not exist")
        }
    }

    /// Batch size thresholds (bytes): (warn, fail). ScyllaDB 128/1024 KB, Cassandra 5/50 KiB.
    pub fn batch_thresholds(self) -> (usize, usize) {
        if self.is_scylla() {
            (128 * 1024, 1024 * 1024)
        } else {
            (5 * 1024, 50 * 1024)
        }
    }

    /// Whether `USING TIMESTAMP` more than 3 days ahead is refused (ScyllaDB's
    /// `restrict_future_timestamp`, on by default).
    pub fn restricts_future_timestamps(self) -> bool {
        self.is_scylla()
    }

    /// The OPTIONS answer.
    pub fn supported(self) -> Vec<(&'static str, Vec<String>)> {
        let mut out = vec![
            ("CQL_VERSION", vec![self.cql_version().to_string()]),
            ("COMPRESSION", Vec::new()),
        ];
        if !self.is_scylla() {
            out.push(("PROTOCOL_VERSIONS", vec!["4/v4".to_string()]));
            return out;
        }
        // The sharding keys tell drivers it is ScyllaDB (`transport/server.cc`); one shard,
        // and no shard-aware port.
        out.extend([
            ("SCYLLA_SHARD", vec!["0".to_string()]),
            ("SCYLLA_NR_SHARDS", vec!["1".to_string()]),
            (
                "SCYLLA_SHARDING_ALGORITHM",
                vec!["biased-token-round-robin".to_string()],
            ),
            ("SCYLLA_SHARDING_IGNORE_MSB", vec!["12".to_string()]),
            (
                "SCYLLA_PARTITIONER",
                vec!["org.apache.cassandra.dht.Murmur3Partitioner".to_string()],
            ),
            (
                "SCYLLA_LWT_ADD_METADATA_MARK",
                vec![format!("LWT_OPTIMIZATION_META_BIT_MASK={LWT_MARK}")],
            ),
            (
                "SCYLLA_RATE_LIMIT_ERROR",
                vec!["ERROR_CODE=61440".to_string()],
            ),
        ]);
        if self.has_tablets() {
            out.push(("TABLETS_ROUTING_V1", vec![String::new()]));
        }
        out
    }

    /// The client warning of a CREATE KEYSPACE that made a tablet keyspace
    /// (`create_keyspace_statement.cc`).
    pub fn tablets_warning(self) -> Option<&'static str> {
        match self {
            Profile::Scylla6_2 => Some(
                "Tables in this keyspace will be replicated using Tablets and will not support CDC, LWT and counters features. To use CDC, LWT or counters, drop this keyspace and re-create it without tablets by adding AND TABLETS = {'enabled': false} to the CREATE KEYSPACE statement.",
            ),
            Profile::Scylla2025_1 | Profile::Scylla2025_1Enforced => Some(
                "Tables in this keyspace will be replicated using Tablets and will not support Materialized Views, Secondary Indexes, CDC, LWT and counters features. To use Materialized Views, Secondary Indexes, CDC, LWT or counters, drop this keyspace and re-create it without tablets by adding AND TABLETS = {'enabled': false} to the CREATE KEYSPACE statement.",
            ),
            Profile::Scylla2025_4 => Some(
                "Tables in this keyspace will be replicated using Tablets and will not support counters features. To use counters, drop this keyspace and re-create it without tablets by adding AND TABLETS = {'enabled': false} to the CREATE KEYSPACE statement.",
            ),
            _ => None,
        }
    }

    /// What server-side `DESCRIBE KEYSPACE` appends for a keyspace's tablets setting
    /// (`data_dictionary.cc`): `tablets` is the initial count of a tablet keyspace, None for a
    /// vnodes one.
    pub fn describe_tablets(self, tablets: Option<i32>) -> &'static str {
        match (self, tablets) {
            (Profile::Scylla5_4 | Profile::Cassandra4_1 | Profile::Cassandra5_0, _) => "",
            (_, None) => " AND tablets = {'enabled': false}",
            (Profile::Scylla6_2, Some(_)) => "",
            (_, Some(_)) => " AND tablets = {'enabled': true}",
        }
    }
}

/// The flag bit ScyllaDB sets in a PREPARED result's metadata flags for a lightweight
/// transaction, when the client asked for it (`cql3/result_set.hh`).
pub const LWT_MARK: u32 = 0x8000_0000;

/// ScyllaDB's refusal of `USING TIMESTAMP` more than 3 days ahead (`cql3/util.cc`).
pub const FUTURE_TIMESTAMP: &str = "Cannot provide a timestamp more than 3 days into the future. If this was not intended, make sure the timestamp is in microseconds. You can also disable this check by setting the restrict_future_timestamp configuration option to false.";

/// ScyllaDB's refusal of a lightweight transaction on a table of a tablet keyspace
/// (`service/storage_proxy.cc`, 6.0 to 2025.3).
pub fn lwt_refused(keyspace: &str, table: &str) -> String {
    format!(
        "Cannot use LightWeight Transactions for table {keyspace}.{table}: LWT is not yet supported with tablets"
    )
}

/// The enforced mode's refusal of `tablets = {'enabled': false}` (`ks_prop_defs.cc`).
pub const TABLETS_ENFORCED: &str = "Cannot disable tablets for keyspace since tablets are enforced using the `tablets_mode_for_new_keyspaces: enforced` config option.";
