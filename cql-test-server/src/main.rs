//! `cql-test-server [--port N] [--host ADDR] [--user U] [--emulate PROFILE]`: run the
//! in-memory CQL test server until Ctrl-C, so `pipeline load`, `lookup` and `verify` can be
//! tried by hand.

use std::process::ExitCode;

use cql_test_server::{Profile, ServerConfig, TestServer};

const USAGE: &str =
    "usage: cql-test-server [--host ADDR] [--port N] [--user NAME] [--emulate PROFILE]
  --host ADDR        listen address (default 127.0.0.1)
  --port N           listen port (default 9042; 0 picks a free one)
  --user NAME        require this user; the password comes from CQL_TEST_SERVER_PASSWORD
  --emulate PROFILE  the server to behave like: scylla-5.4, scylla-6.2 (default: the compose
                     file's), scylla-2025.1, scylla-2025.1-enforced, scylla-2025.4,
                     cassandra-4.1, cassandra-5.0 (also env CQL_TEST_SERVER_EMULATE)";

fn main() -> ExitCode {
    let mut host = "127.0.0.1".to_string();
    let mut port = "9042".to_string();
    let mut user = None;
    let mut emulate = std::env::var("CQL_TEST_SERVER_EMULATE").ok();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r = match a.as_str() {
            "--host" => value("--host").map(|v| host = v),
            "--port" => value("--port").map(|v| port = v),
            "--user" => value("--user").map(|v| user = Some(v)),
            "--emulate" => value("--emulate").map(|v| emulate = Some(v)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument `{other}`")),
        };
        if let Err(e) = r {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let addr = match format!("{host}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: bad address {host}:{port}: {e}");
            return ExitCode::from(2);
        }
    };
    let profile = match emulate.as_deref().map(|e| (e, Profile::parse(e))) {
        None => Profile::default(),
        Some((_, Some(p))) => p,
        Some((e, None)) => {
            let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
            eprintln!("error: unknown profile `{e}` (one of {})", names.join(", "));
            return ExitCode::from(2);
        }
    };
    let credentials = match user {
        None => None,
        Some(u) => match std::env::var("CQL_TEST_SERVER_PASSWORD") {
            Ok(p) => Some((u, p)),
            Err(_) => {
                eprintln!("error: --user needs the password in CQL_TEST_SERVER_PASSWORD");
                return ExitCode::from(2);
            }
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let config = ServerConfig {
            addr,
            credentials,
            // A long manual session would grow the log without bound.
            log_requests: false,
            profile,
        };
        let server = match TestServer::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        println!(
            "cql-test-server listening on {} (CQL v4), behaving like {}.\n\
             This is an in-memory TEST server, not a database: one node, no persistence, \
             no replication, no TTL, no Paxos. Stop with Ctrl-C; everything is lost.",
            server.addr(),
            profile.name()
        );
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
