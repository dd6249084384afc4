//! The CQL subset the pipeline and the driver send, parsed by hand. Anything else is an error
//! that names the statement, so a new driver or caller fails loudly instead of hanging.

use crate::types::{CqlType, Literal};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Num(String),
    Sym(&'static str),
    Marker,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == '-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_string()));
        } else if c.is_ascii_digit()
            || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let st = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Num(s[st..i].to_string()));
        } else if c == '\'' || c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(format!("unterminated {c}-quoted text"));
                }
                if b[i] as char == c {
                    if b.get(i + 1) == Some(&(c as u8)) {
                        v.push(c);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                let ch = s[i..].chars().next().expect("in bounds");
                v.push(ch);
                i += ch.len_utf8();
            }
            out.push(if c == '\'' {
                Tok::Str(v)
            } else {
                Tok::Quoted(v)
            });
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match two {
                "<=" => "<=",
                ">=" => ">=",
                "!=" => "!=",
                _ => match c {
                    '(' => "(",
                    ')' => ")",
                    ',' => ",",
                    ';' => ";",
                    '.' => ".",
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    '*' => "*",
                    '{' => "{",
                    '}' => "}",
                    '[' => "[",
                    ']' => "]",
                    ':' => ":",
                    '?' => {
                        out.push(Tok::Marker);
                        i += 1;
                        continue;
                    }
                    _ => return Err(format!("unexpected character `{c}`")),
                },
            };
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

/// A value in a statement: a literal or the n-th bind marker.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Lit(Literal),
    Marker(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    One(Term),
    /// `IN (a, b)`; `IN ?` is `One(Marker)` with `Op::In`.
    List(Vec<Term>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub column: String,
    pub op: Op,
    pub rhs: Rhs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableRef {
    pub keyspace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    Star,
    Count,
    Columns(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    CreateKeyspace {
        name: String,
        if_not_exists: bool,
        replication: Vec<(String, String)>,
        durable_writes: bool,
        /// `AND tablets = {...}` (ScyllaDB 6.0+), as text pairs.
        tablets: Option<Vec<(String, String)>>,
    },
    /// Server-side `DESCRIBE` (ScyllaDB 5.2+, Cassandra 4.0+).
    Describe(Describe),
    CreateTable {
        table: TableRef,
        if_not_exists: bool,
        columns: Vec<(String, CqlType)>,
        partition_key: Vec<String>,
        clustering: Vec<String>,
        descending: Vec<String>,
    },
    DropKeyspace {
        name: String,
        if_exists: bool,
    },
    DropTable {
        table: TableRef,
        if_exists: bool,
    },
    Truncate(TableRef),
    Use(String),
    Insert {
        table: TableRef,
        columns: Vec<String>,
        values: Vec<Term>,
        /// `IF NOT EXISTS`: a lightweight transaction.
        if_not_exists: bool,
        /// `USING TIMESTAMP`: the write timestamp (µs).
        timestamp: Option<Term>,
    },
    Update {
        table: TableRef,
        sets: Vec<(String, Term)>,
        conds: Vec<Cond>,
        timestamp: Option<Term>,
        /// `IF EXISTS` / `IF cond AND ...`: a lightweight transaction.
        condition: Option<Condition>,
    },
    Select {
        table: TableRef,
        projection: Projection,
        conds: Vec<Cond>,
        limit: Option<Term>,
        /// `SELECT DISTINCT` of the partition key columns.
        distinct: bool,
        /// `USING TIMEOUT` (ScyllaDB only).
        timeout: bool,
    },
    Delete {
        table: TableRef,
        conds: Vec<Cond>,
        timestamp: Option<Term>,
        condition: Option<Condition>,
    },
}

/// The condition of a lightweight UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `IF EXISTS`
    Exists,
    /// `IF a = ? AND b < ?`
    Conds(Vec<Cond>),
}

/// A parsed statement and how many bind markers it has.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stmt: Stmt,
    pub markers: usize,
}

struct P {
    toks: Vec<Tok>,
    pos: usize,
    markers: usize,
}

/// What a `DESCRIBE` names.
#[derive(Debug, Clone, PartialEq)]
pub enum Describe {
    /// `DESCRIBE KEYSPACES`.
    Keyspaces,
    /// `DESCRIBE KEYSPACE ks`.
    Keyspace(String),
    /// `DESCRIBE TABLE [ks.]t`.
    Table(TableRef),
}

pub fn parse(text: &str) -> Result<Parsed, String> {
    let toks = tokenize(text)?;
    let mut p = P {
        toks,
        pos: 0,
        markers: 0,
    };
    let stmt = p.statement(text)?;
    p.eat_sym(";");
    if p.pos != p.toks.len() {
        return Err(format!(
            "unexpected {:?} after the end of the statement",
            p.toks[p.pos]
        ));
    }
    Ok(Parsed {
        stmt,
        markers: p.markers,
    })
}

/// The first words of a statement, for error messages.
pub fn head(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    words.join(" ")
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw}, found {:?}", self.peek()))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &str) -> Result<(), String> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(format!("expected `{s}`, found {:?}", self.peek()))
        }
    }

    /// An identifier: unquoted ones are case-insensitive (lowercased), quoted ones exact.
    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s.to_ascii_lowercase()),
            Some(Tok::Quoted(s)) => Ok(s),
            t => Err(format!("expected a name, found {t:?}")),
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, String> {
        if self.eat_kw("if") {
            self.kw("not")?;
            self.kw("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn if_exists(&mut self) -> Result<bool, String> {
        if self.eat_kw("if") {
            self.kw("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn table_ref(&mut self) -> Result<TableRef, String> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok(TableRef {
                keyspace: Some(first),
                name: self.ident()?,
            })
        } else {
            Ok(TableRef {
                keyspace: None,
                name: first,
            })
        }
    }

    fn statement(&mut self, text: &str) -> Result<Stmt, String> {
        let unsupported = || {
            format!(
                "cql-test-server does not support `{}` (it is an in-memory test server, not a database)",
                head(text)
            )
        };
        if self.eat_kw("create") {
            if self.eat_kw("keyspace") {
                return self.create_keyspace();
            }
            if self.eat_kw("table") || self.eat_kw("columnfamily") {
                return self.create_table();
            }
            return Err(unsupported());
        }
        if self.eat_kw("drop") {
            if self.eat_kw("keyspace") {
                let if_exists = self.if_exists()?;
                return Ok(Stmt::DropKeyspace {
                    if_exists,
                    name: self.ident()?,
                });
            }
            if self.eat_kw("table") {
                let if_exists = self.if_exists()?;
                return Ok(Stmt::DropTable {
                    if_exists,
                    table: self.table_ref()?,
                });
            }
            return Err(unsupported());
        }
        if self.eat_kw("truncate") {
            self.eat_kw("table");
            return Ok(Stmt::Truncate(self.table_ref()?));
        }
        if self.eat_kw("use") {
            return Ok(Stmt::Use(self.ident()?));
        }
        if self.eat_kw("describe") || self.eat_kw("desc") {
            if self.eat_kw("keyspaces") {
                return Ok(Stmt::Describe(Describe::Keyspaces));
            }
            if self.eat_kw("keyspace") {
                return Ok(Stmt::Describe(Describe::Keyspace(self.ident()?)));
            }
            if self.eat_kw("table") || self.eat_kw("columnfamily") {
                return Ok(Stmt::Describe(Describe::Table(self.table_ref()?)));
            }
            return Err(unsupported());
        }
        if self.eat_kw("insert") {
            return self.insert(&unsupported);
        }
        if self.eat_kw("select") {
            return self.select(&unsupported);
        }
        if self.eat_kw("delete") {
            self.kw("from")?;
            let table = self.table_ref()?;
            let timestamp = self.using()?;
            self.kw("where")?;
            let conds = self.conds()?;
            let condition = self.condition()?;
            return Ok(Stmt::Delete {
                table,
                conds,
                timestamp,
                condition,
            });
        }
        if self.eat_kw("update") {
            let table = self.table_ref()?;
            let timestamp = self.using()?;
            self.kw("set")?;
            let mut sets = Vec::new();
            loop {
                let c = self.ident()?;
                self.sym("=")?;
                sets.push((c, self.term()?));
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.kw("where")?;
            let conds = self.conds()?;
            let condition = self.condition()?;
            return Ok(Stmt::Update {
                table,
                sets,
                conds,
                timestamp,
                condition,
            });
        }
        Err(unsupported())
    }

    fn create_keyspace(&mut self) -> Result<Stmt, String> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident()?;
        let mut replication = Vec::new();
        let mut durable_writes = true;
        let mut tablets = None;
        self.kw("with")?;
        loop {
            let opt = self.ident()?;
            self.sym("=")?;
            match opt.as_str() {
                "replication" => match self.literal()? {
                    Literal::Map(items) => {
                        for (k, v) in items {
                            replication.push((lit_text(&k), lit_text(&v)));
                        }
                    }
                    l => return Err(format!("replication must be a map, found {l:?}")),
                },
                "durable_writes" => {
                    durable_writes = !matches!(self.literal()?, Literal::Bool(false))
                }
                // The grammar takes any `name = map`; which names exist is the server's
                // (see `Store::create_keyspace`).
                "tablets" => match self.literal()? {
                    Literal::Map(items) => {
                        tablets = Some(
                            items
                                .iter()
                                .map(|(k, v)| (lit_text(k), lit_text(v)))
                                .collect(),
                        )
                    }
                    l => return Err(format!("tablets must be a map, found {l:?}")),
                },
                other => return Err(format!("Unknown property '{other}'")),
            }
            if !self.eat_kw("and") {
                break;
            }
        }
        Ok(Stmt::CreateKeyspace {
            name,
            if_not_exists,
            replication,
            tablets,
            durable_writes,
        })
    }

    /// A type name as raw text up to the next top-level `,` or `)` / keyword.
    fn type_text(&mut self) -> Result<String, String> {
        let mut s = self.ident()?;
        if self.eat_sym("<") {
            s.push('<');
            let mut depth = 1;
            while depth > 0 {
                match self.next() {
                    Some(Tok::Sym("<")) => {
                        depth += 1;
                        s.push('<')
                    }
                    Some(Tok::Sym(">")) => {
                        depth -= 1;
                        s.push('>')
                    }
                    Some(Tok::Sym(",")) => s.push(','),
                    Some(Tok::Ident(i)) => s.push_str(&i),
                    t => return Err(format!("unexpected {t:?} in a type")),
                }
            }
        }
        Ok(s)
    }

    fn name_list(&mut self) -> Result<Vec<String>, String> {
        let mut v = vec![self.ident()?];
        while self.eat_sym(",") {
            v.push(self.ident()?);
        }
        Ok(v)
    }

    fn create_table(&mut self) -> Result<Stmt, String> {
        let if_not_exists = self.if_not_exists()?;
        let table = self.table_ref()?;
        self.sym("(")?;
        let mut columns = Vec::new();
        let mut partition_key = Vec::new();
        let mut clustering = Vec::new();
        loop {
            if self.eat_kw("primary") {
                self.kw("key")?;
                self.sym("(")?;
                if self.eat_sym("(") {
                    partition_key = self.name_list()?;
                    self.sym(")")?;
                } else {
                    partition_key = vec![self.ident()?];
                }
                while self.eat_sym(",") {
                    clustering.push(self.ident()?);
                }
                self.sym(")")?;
            } else {
                let name = self.ident()?;
                let t = CqlType::parse(&self.type_text()?)?;
                if self.eat_kw("primary") {
                    self.kw("key")?;
                    partition_key = vec![name.clone()];
                }
                if self.is_kw("static") {
                    return Err("static columns are not supported by cql-test-server".into());
                }
                columns.push((name, t));
            }
            if !self.eat_sym(",") {
                break;
            }
        }
        self.sym(")")?;
        let mut descending = Vec::new();
        if self.eat_kw("with") {
            loop {
                if self.eat_kw("clustering") {
                    self.kw("order")?;
                    self.kw("by")?;
                    self.sym("(")?;
                    loop {
                        let c = self.ident()?;
                        if self.eat_kw("desc") {
                            descending.push(c);
                        } else {
                            self.eat_kw("asc");
                        }
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    self.sym(")")?;
                } else {
                    // Table options (comment, compaction, ...) are accepted and ignored.
                    self.ident()?;
                    self.sym("=")?;
                    self.literal()?;
                }
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        if partition_key.is_empty() {
            return Err("a table needs a PRIMARY KEY".into());
        }
        Ok(Stmt::CreateTable {
            table,
            if_not_exists,
            columns,
            partition_key,
            clustering,
            descending,
        })
    }

    fn insert(&mut self, unsupported: &dyn Fn() -> String) -> Result<Stmt, String> {
        self.kw("into")?;
        let table = self.table_ref()?;
        if self.is_kw("json") {
            return Err(unsupported());
        }
        self.sym("(")?;
        let columns = self.name_list()?;
        self.sym(")")?;
        self.kw("values")?;
        self.sym("(")?;
        let mut values = vec![self.term()?];
        while self.eat_sym(",") {
            values.push(self.term()?);
        }
        self.sym(")")?;
        let if_not_exists = self.if_not_exists()?;
        let timestamp = self.using()?;
        if columns.len() != values.len() {
            return Err(format!(
                "{} columns but {} values",
                columns.len(),
                values.len()
            ));
        }
        Ok(Stmt::Insert {
            table,
            columns,
            values,
            if_not_exists,
            timestamp,
        })
    }

    /// `USING TIMESTAMP t` (TTL is not supported).
    fn using(&mut self) -> Result<Option<Term>, String> {
        if !self.eat_kw("using") {
            return Ok(None);
        }
        if self.is_kw("ttl") {
            return Err("USING TTL is not supported by cql-test-server".into());
        }
        self.kw("timestamp")?;
        let t = self.term()?;
        if self.is_kw("and") {
            return Err("USING TTL is not supported by cql-test-server".into());
        }
        Ok(Some(t))
    }

    /// `IF EXISTS` or `IF cond AND ...` after an UPDATE or DELETE.
    fn condition(&mut self) -> Result<Option<Condition>, String> {
        if !self.eat_kw("if") {
            return Ok(None);
        }
        if self.eat_kw("exists") {
            return Ok(Some(Condition::Exists));
        }
        Ok(Some(Condition::Conds(self.conds()?)))
    }

    fn select(&mut self, unsupported: &dyn Fn() -> String) -> Result<Stmt, String> {
        if self.is_kw("json") {
            return Err(unsupported());
        }
        let distinct = self.eat_kw("distinct");
        let projection = if self.eat_sym("*") {
            Projection::Star
        } else if self.is_kw("count") {
            self.pos += 1;
            self.sym("(")?;
            if !self.eat_sym("*") {
                self.ident()?;
            }
            self.sym(")")?;
            Projection::Count
        } else {
            let cols = self.name_list()?;
            if self.peek() == Some(&Tok::Sym("(")) || self.is_kw("as") {
                return Err(unsupported());
            }
            Projection::Columns(cols)
        };
        self.kw("from")?;
        let table = self.table_ref()?;
        let conds = if self.eat_kw("where") {
            self.conds()?
        } else {
            Vec::new()
        };
        if self.is_kw("order") || self.is_kw("group") || self.is_kw("per") {
            return Err(unsupported());
        }
        let limit = if self.eat_kw("limit") {
            Some(self.term()?)
        } else {
            None
        };
        if self.eat_kw("allow") {
            self.kw("filtering")?;
        }
        // ScyllaDB's `USING TIMEOUT 2000ms` (its Python driver adds it to metadata queries).
        let timeout = if self.eat_kw("using") {
            self.kw("timeout")?;
            match self.next() {
                Some(Tok::Num(_)) => {
                    self.ident()?;
                }
                t => {
                    return Err(format!(
                        "expected a duration after USING TIMEOUT, found {t:?}"
                    ));
                }
            }
            true
        } else {
            false
        };
        Ok(Stmt::Select {
            table,
            projection,
            conds,
            limit,
            distinct,
            timeout,
        })
    }

    fn conds(&mut self) -> Result<Vec<Cond>, String> {
        let mut out = Vec::new();
        loop {
            let column = self.ident()?;
            let op = match self.next() {
                Some(Tok::Sym("=")) => Op::Eq,
                Some(Tok::Sym("<")) => Op::Lt,
                Some(Tok::Sym("<=")) => Op::Le,
                Some(Tok::Sym(">")) => Op::Gt,
                Some(Tok::Sym(">=")) => Op::Ge,
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("in") => Op::In,
                t => return Err(format!("unsupported condition operator {t:?}")),
            };
            let rhs = if op == Op::In && self.eat_sym("(") {
                let mut v = vec![self.term()?];
                while self.eat_sym(",") {
                    v.push(self.term()?);
                }
                self.sym(")")?;
                Rhs::List(v)
            } else {
                Rhs::One(self.term()?)
            };
            out.push(Cond { column, op, rhs });
            if !self.eat_kw("and") {
                return Ok(out);
            }
        }
    }

    fn term(&mut self) -> Result<Term, String> {
        if self.peek() == Some(&Tok::Marker) {
            self.pos += 1;
            self.markers += 1;
            return Ok(Term::Marker(self.markers - 1));
        }
        Ok(Term::Lit(self.literal()?))
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Literal::Str(s)),
            Some(Tok::Num(n)) => Ok(Literal::Num(n)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            Some(Tok::Sym("{")) => {
                let mut map = Vec::new();
                let mut set = Vec::new();
                if !self.eat_sym("}") {
                    loop {
                        let k = self.literal()?;
                        if self.eat_sym(":") {
                            map.push((k, self.literal()?));
                        } else {
                            set.push(k);
                        }
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    self.sym("}")?;
                }
                Ok(if set.is_empty() {
                    Literal::Map(map)
                } else {
                    Literal::Coll(set)
                })
            }
            Some(Tok::Sym("[")) => {
                let mut v = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        v.push(self.literal()?);
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    self.sym("]")?;
                }
                Ok(Literal::Coll(v))
            }
            t => Err(format!("expected a value, found {t:?}")),
        }
    }
}

fn lit_text(l: &Literal) -> String {
    match l {
        Literal::Str(s) | Literal::Num(s) => s.clone(),
        Literal::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_schema() {
        let p = parse(
            "CREATE TABLE IF NOT EXISTS analytics.customer_daily_aggregates (
               customer_id bigint, transaction_date date, total_amount decimal,
               PRIMARY KEY ((customer_id), transaction_date)
             ) WITH CLUSTERING ORDER BY (transaction_date DESC);",
        )
        .unwrap();
        let Stmt::CreateTable {
            partition_key,
            clustering,
            descending,
            columns,
            ..
        } = p.stmt
        else {
            panic!("{:?}", p.stmt)
        };
        assert_eq!(partition_key, ["customer_id"]);
        assert_eq!(clustering, ["transaction_date"]);
        assert_eq!(descending, ["transaction_date"]);
        assert_eq!(columns.len(), 3);
    }

    #[test]
    fn counts_bind_markers_and_reads_ranges() {
        let p = parse("SELECT a, b FROM ks.t WHERE k = ? AND c >= ? AND c <= '2024-01-01' LIMIT ?")
            .unwrap();
        assert_eq!(p.markers, 3);
        let Stmt::Select { conds, limit, .. } = p.stmt else {
            panic!()
        };
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[1].op, Op::Ge);
        assert_eq!(limit, Some(Term::Marker(2)));
    }

    #[test]
    fn unsupported_statements_name_themselves() {
        let e = parse("ALTER TABLE ks.t ADD c int").unwrap_err();
        assert!(e.contains("ALTER TABLE ks.t"), "{e}");
        let e = parse("INSERT INTO t (a) VALUES (1) USING TTL 5").unwrap_err();
        assert!(e.contains("TTL"), "{e}");
    }

    #[test]
    fn timestamps_and_lightweight_conditions_keep_marker_order() {
        let p =
            parse("UPDATE ks.t USING TIMESTAMP ? SET a = ?, b = 3 WHERE k = ? IF a = ? AND b < ?")
                .unwrap();
        assert_eq!(p.markers, 5);
        let Stmt::Update {
            timestamp,
            sets,
            condition,
            ..
        } = p.stmt
        else {
            panic!()
        };
        assert_eq!(timestamp, Some(Term::Marker(0)));
        assert_eq!(sets[0], ("a".into(), Term::Marker(1)));
        let Some(Condition::Conds(c)) = condition else {
            panic!()
        };
        assert_eq!((c[1].column.as_str(), c[1].op), ("b", Op::Lt));
        let p =
            parse("INSERT INTO t (a, b) VALUES (?, ?) IF NOT EXISTS USING TIMESTAMP ?").unwrap();
        let Stmt::Insert {
            if_not_exists,
            timestamp,
            ..
        } = p.stmt
        else {
            panic!()
        };
        assert!(if_not_exists);
        assert_eq!(timestamp, Some(Term::Marker(2)));
        let p = parse("DELETE FROM t USING TIMESTAMP 5 WHERE k = 1").unwrap();
        assert!(matches!(
            p.stmt,
            Stmt::Delete {
                timestamp: Some(_),
                ..
            }
        ));
        assert!(matches!(
            parse("SELECT DISTINCT k FROM t").unwrap().stmt,
            Stmt::Select { distinct: true, .. }
        ));
    }

    #[test]
    fn quoted_names_keep_their_case_and_strings_unescape() {
        let p = parse("INSERT INTO \"Ks\".t (a) VALUES ('it''s')").unwrap();
        let Stmt::Insert { table, values, .. } = p.stmt else {
            panic!()
        };
        assert_eq!(table.keyspace.as_deref(), Some("Ks"));
        assert_eq!(values, [Term::Lit(Literal::Str("it's".into()))]);
    }
}
