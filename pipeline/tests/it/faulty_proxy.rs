//! A fault-injecting HTTP/1.1 proxy in front of an S3 server, for tests: it forwards every
//! request as it is (the `Host` header, hence the SigV4 signature, unchanged) and relays the
//! answer, except for requests that match a rule: those are forwarded and applied by the
//! store, and then their answer is lost (the connection closed without a byte, as a proxy or
//! load balancer dropping it) or replaced by a `502 Bad Gateway`. This is the ambiguous
//! outcome a client can never rule out: the write happened, the writer does not know it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What happens to the answer of a matching request (after the store applied it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lost {
    /// The connection is closed without an answer.
    Dropped,
    /// `502 Bad Gateway` instead of the store's answer.
    BadGateway,
}

/// Requests whose method is `method` and whose path contains `contains` and ends with
/// `suffix`: the first `skip` go through, the next `times` lose their answer.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: String,
    pub contains: String,
    pub suffix: String,
    pub skip: u32,
    pub times: u32,
    pub lost: Lost,
    seen: u32,
    hit: u32,
}

impl Rule {
    pub fn new(method: &str, contains: &str, suffix: &str, lost: Lost) -> Self {
        Rule {
            method: method.into(),
            contains: contains.into(),
            suffix: suffix.into(),
            skip: 0,
            times: 1,
            lost,
            seen: 0,
            hit: 0,
        }
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// `METHOD path -> status` of every request, and what the proxy did.
    log: Vec<String>,
}

/// The proxy, serving on a free loopback port until the test process ends.
#[derive(Clone)]
pub struct FaultyProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FaultyProxy {
    /// A proxy in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.trim_start_matches("http://").to_string();
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (state, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || relay(conn, &upstream, &state));
            }
        });
        FaultyProxy { endpoint, state }
    }

    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// How many answers the rules made lost.
    pub fn hits(&self) -> u32 {
        self.state.lock().unwrap().rules.iter().map(|r| r.hit).sum()
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// The log lines of the requests whose path contains `what`.
    pub fn log_of(&self, what: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.log.iter().filter(|l| l.contains(what)).cloned().collect()
    }
}

/// A request or an answer as read off a connection: its head (start line and headers, raw)
/// and body (raw, chunked framing kept).
struct Message {
    head: Vec<u8>,
    start: String,
    body: Vec<u8>,
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one message; `None` at the end of the connection. `no_body`: an answer to a HEAD
/// request (no body whatever its headers say).
fn read_message(r: &mut impl BufRead, no_body: bool) -> Option<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let start = text.lines().next().unwrap_or("").to_string();
    let status = start
        .strip_prefix("HTTP/")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let status_without_body = status.is_some_and(|c| c < 200 || c == 204 || c == 304);
    let mut body = Vec::new();
    if no_body || status_without_body {
    } else if header(&text, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line).ok()?;
            body.extend_from_slice(&size_line);
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&size_line)
                    .trim()
                    .split(';')
                    .next()?,
                16,
            )
            .ok()?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = header(&text, "content-length").and_then(|v| v.parse().ok()) {
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    } else if start.starts_with("HTTP/") {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Message { head, start, body })
}

fn relay(client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let mut from_client = BufReader::new(client.try_clone().unwrap());
    let mut to_client = client;
    while let Some(req) = read_message(&mut from_client, false) {
        let mut parts = req.start.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let path_only = path.split('?').next().unwrap_or("").to_string();
        let lost = {
            let mut s = state.lock().unwrap();
            let mut lost = None;
            for rule in s.rules.iter_mut() {
                if rule.method == method
                    && path_only.contains(&rule.contains)
                    && path_only.ends_with(&rule.suffix)
                {
                    rule.seen += 1;
                    if rule.seen > rule.skip && rule.hit < rule.times {
                        rule.hit += 1;
                        lost = Some(rule.lost);
                    }
                }
            }
            lost
        };
        let Ok(up) = TcpStream::connect(upstream) else {
            return;
        };
        let mut to_up = up.try_clone().unwrap();
        if to_up.write_all(&req.head).is_err() || to_up.write_all(&req.body).is_err() {
            return;
        }
        let Some(answer) = read_message(&mut BufReader::new(up), method == "HEAD") else {
            return;
        };
        state.lock().unwrap().log.push(format!(
            "{method} {path_only} -> {}{}",
            answer.start.split_whitespace().nth(1).unwrap_or("?"),
            match lost {
                None => "",
                Some(Lost::Dropped) => " (answer dropped by the proxy)",
                Some(Lost::BadGateway) => " (answer replaced by 502 by the proxy)",
            }
        ));
        match lost {
            Some(Lost::Dropped) => {
                let _ = to_client.shutdown(std::net::Shutdown::Both);
                return;
            }
            Some(Lost::BadGateway) => {
                let body = "<Error><Code>BadGateway</Code></Error>";
                let _ = write!(
                    to_client,
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            None => {
                if to_client.write_all(&answer.head).is_err()
                    || to_client.write_all(&answer.body).is_err()
                {
                    return;
                }
            }
        }
    }
}
