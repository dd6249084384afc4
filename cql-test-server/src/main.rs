//! `cql-test-server [--port N] [--host ADDR] [--user U --password-file F]`: run the in-memory
//! CQL test server until Ctrl-C, so `pipeline load`, `lookup` and `verify` can be tried by hand.

use std::process::ExitCode;

use cql_test_server::{ServerConfig, TestServer};

const USAGE: &str = "usage: cql-test-server [--host ADDR] [--port N] [--user NAME]
  --host ADDR   listen address (default 127.0.0.1)
  --port N      listen port (default 9042; 0 picks a free one)
  --user NAME   require this user; the password comes from CQL_TEST_SERVER_PASSWORD";

fn main() -> ExitCode {
    let mut host = "127.0.0.1".to_string();
    let mut port = "9042".to_string();
    let mut user = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r = match a.as_str() {
            "--host" => value("--host").map(|v| host = v),
            "--port" => value("--port").map(|v| port = v),
            "--user" => value("--user").map(|v| user = Some(v)),
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
        };
        let server = match TestServer::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        println!(
            "cql-test-server listening on {} (CQL v4).\n\
             This is an in-memory TEST server, not a database: one node, no persistence, \
             no replication, no TTL or LWT. Stop with Ctrl-C; everything is lost.",
            server.addr()
        );
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
