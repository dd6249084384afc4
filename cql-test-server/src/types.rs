//! CQL types: names in DDL, `[option]` ids on the wire, literals to serialized values, and the
//! ordering of clustering keys.

use std::cmp::Ordering;

use crate::frame::Writer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    Ascii,
    BigInt,
    Blob,
    Boolean,
    Counter,
    Decimal,
    Double,
    Float,
    Int,
    Timestamp,
    Uuid,
    Text,
    Varint,
    TimeUuid,
    Inet,
    Date,
    Time,
    SmallInt,
    TinyInt,
    List(Box<CqlType>),
    Map(Box<CqlType>, Box<CqlType>),
    Set(Box<CqlType>),
}

impl CqlType {
    /// Parse a type as written in CREATE TABLE (`frozen<...>` is accepted and dropped).
    pub fn parse(s: &str) -> Result<CqlType, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if let Some((outer, inner)) = lower.split_once('<') {
            let inner = inner
                .strip_suffix('>')
                .ok_or_else(|| format!("unbalanced '<' in type `{s}`"))?;
            let outer = outer.trim();
            return match outer {
                "frozen" => CqlType::parse(inner),
                "list" => Ok(CqlType::List(Box::new(CqlType::parse(inner)?))),
                "set" => Ok(CqlType::Set(Box::new(CqlType::parse(inner)?))),
                "map" => {
                    let (k, v) = split_top_level_comma(inner)
                        .ok_or_else(|| format!("map type `{s}` needs two types"))?;
                    Ok(CqlType::Map(
                        Box::new(CqlType::parse(k)?),
                        Box::new(CqlType::parse(v)?),
                    ))
                }
                _ => Err(format!("type `{s}` is not supported by cql-test-server")),
            };
        }
        Ok(match lower.as_str() {
            "ascii" => CqlType::Ascii,
            "bigint" => CqlType::BigInt,
            "blob" => CqlType::Blob,
            "boolean" => CqlType::Boolean,
            "counter" => CqlType::Counter,
            "decimal" => CqlType::Decimal,
            "double" => CqlType::Double,
            "float" => CqlType::Float,
            "int" => CqlType::Int,
            "timestamp" => CqlType::Timestamp,
            "uuid" => CqlType::Uuid,
            "text" | "varchar" => CqlType::Text,
            "varint" => CqlType::Varint,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            "date" => CqlType::Date,
            "time" => CqlType::Time,
            "smallint" => CqlType::SmallInt,
            "tinyint" => CqlType::TinyInt,
            _ => return Err(format!("type `{s}` is not supported by cql-test-server")),
        })
    }

    /// The name `system_schema.columns.type` shows.
    pub fn cql_name(&self) -> String {
        match self {
            CqlType::Ascii => "ascii".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Blob => "blob".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::Counter => "counter".into(),
            CqlType::Decimal => "decimal".into(),
            CqlType::Double => "double".into(),
            CqlType::Float => "float".into(),
            CqlType::Int => "int".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Uuid => "uuid".into(),
            CqlType::Text => "text".into(),
            CqlType::Varint => "varint".into(),
            CqlType::TimeUuid => "timeuuid".into(),
            CqlType::Inet => "inet".into(),
            CqlType::Date => "date".into(),
            CqlType::Time => "time".into(),
            CqlType::SmallInt => "smallint".into(),
            CqlType::TinyInt => "tinyint".into(),
            CqlType::List(t) => format!("list<{}>", t.cql_name()),
            CqlType::Set(t) => format!("set<{}>", t.cql_name()),
            CqlType::Map(k, v) => format!("frozen<map<{}, {}>>", k.cql_name(), v.cql_name()),
        }
    }

    /// Write the `[option]` for this type.
    pub fn write_option(&self, w: &mut Writer) {
        let id: u16 = match self {
            CqlType::Ascii => 0x0001,
            CqlType::BigInt => 0x0002,
            CqlType::Blob => 0x0003,
            CqlType::Boolean => 0x0004,
            CqlType::Counter => 0x0005,
            CqlType::Decimal => 0x0006,
            CqlType::Double => 0x0007,
            CqlType::Float => 0x0008,
            CqlType::Int => 0x0009,
            CqlType::Timestamp => 0x000B,
            CqlType::Uuid => 0x000C,
            CqlType::Text => 0x000D,
            CqlType::Varint => 0x000E,
            CqlType::TimeUuid => 0x000F,
            CqlType::Inet => 0x0010,
            CqlType::Date => 0x0011,
            CqlType::Time => 0x0012,
            CqlType::SmallInt => 0x0013,
            CqlType::TinyInt => 0x0014,
            CqlType::List(_) => 0x0020,
            CqlType::Map(_, _) => 0x0021,
            CqlType::Set(_) => 0x0022,
        };
        w.u16(id);
        match self {
            CqlType::List(t) | CqlType::Set(t) => t.write_option(w),
            CqlType::Map(k, v) => {
                k.write_option(w);
                v.write_option(w);
            }
            _ => {}
        }
    }

    /// Check that `b` is a well-formed value of this type (fixed widths, UTF-8).
    pub fn validate(&self, b: &[u8]) -> Result<(), String> {
        let want = match self {
            CqlType::BigInt | CqlType::Counter | CqlType::Timestamp | CqlType::Time => Some(8),
            CqlType::Double => Some(8),
            CqlType::Int | CqlType::Float | CqlType::Date => Some(4),
            CqlType::SmallInt => Some(2),
            CqlType::TinyInt | CqlType::Boolean => Some(1),
            CqlType::Uuid | CqlType::TimeUuid => Some(16),
            _ => None,
        };
        if let Some(n) = want
            && b.len() != n
        {
            return Err(format!(
                "expected {n} bytes for {}, got {}",
                self.cql_name(),
                b.len()
            ));
        }
        match self {
            CqlType::Text | CqlType::Ascii if std::str::from_utf8(b).is_err() => {
                Err("invalid UTF-8 string".into())
            }
            CqlType::Decimal if b.len() < 4 => Err("decimal needs at least 4 bytes".into()),
            CqlType::Inet if b.len() != 4 && b.len() != 16 => {
                Err("inet needs 4 or 16 bytes".into())
            }
            _ => Ok(()),
        }
    }
}

fn split_top_level_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A literal in CQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
    /// `{k: v, ...}` (a map) or `{a, b}` (a set), and `[a, b]` (a list).
    Map(Vec<(Literal, Literal)>),
    Coll(Vec<Literal>),
}

/// Serialize a literal as a value of `t` (None = null).
pub fn literal_to_bytes(lit: &Literal, t: &CqlType) -> Result<Option<Vec<u8>>, String> {
    let bad = || format!("cannot use {lit:?} as a {}", t.cql_name());
    Ok(Some(match (lit, t) {
        (Literal::Null, _) => return Ok(None),
        (Literal::Str(s), CqlType::Text | CqlType::Ascii) => s.as_bytes().to_vec(),
        (Literal::Str(s), CqlType::Date) => {
            let days = parse_date(s).ok_or_else(bad)?;
            ((days as i64 + (1i64 << 31)) as u32).to_be_bytes().to_vec()
        }
        (Literal::Str(s), CqlType::Inet) => {
            let ip: std::net::IpAddr = s.parse().map_err(|_| bad())?;
            match ip {
                std::net::IpAddr::V4(v) => v.octets().to_vec(),
                std::net::IpAddr::V6(v) => v.octets().to_vec(),
            }
        }
        (Literal::Str(s), CqlType::Uuid | CqlType::TimeUuid) => parse_uuid(s).ok_or_else(bad)?,
        (Literal::Str(s), CqlType::Blob) => s.as_bytes().to_vec(),
        (Literal::Bool(b), CqlType::Boolean) => vec![*b as u8],
        (Literal::Num(n), CqlType::BigInt | CqlType::Counter | CqlType::Timestamp) => {
            n.parse::<i64>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::Int) => {
            n.parse::<i32>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::SmallInt) => {
            n.parse::<i16>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::TinyInt) => {
            n.parse::<i8>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::Double) => {
            n.parse::<f64>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::Float) => {
            n.parse::<f32>().map_err(|_| bad())?.to_be_bytes().to_vec()
        }
        (Literal::Num(n), CqlType::Varint) => varint_bytes(n.parse::<i128>().map_err(|_| bad())?),
        (Literal::Num(n), CqlType::Decimal) => {
            let (int, frac) = n.split_once('.').unwrap_or((n, ""));
            let unscaled: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
            let mut out = (frac.len() as i32).to_be_bytes().to_vec();
            out.extend(varint_bytes(unscaled));
            out
        }
        (Literal::Coll(items), CqlType::List(e) | CqlType::Set(e)) => {
            let mut out = (items.len() as i32).to_be_bytes().to_vec();
            for it in items {
                let b = literal_to_bytes(it, e)?.ok_or("null inside a collection")?;
                out.extend((b.len() as i32).to_be_bytes());
                out.extend(b);
            }
            out
        }
        (Literal::Map(items), CqlType::Map(kt, vt)) => {
            let mut out = (items.len() as i32).to_be_bytes().to_vec();
            for (k, v) in items {
                for (lit, t) in [(k, kt), (v, vt)] {
                    let b = literal_to_bytes(lit, t)?.ok_or("null inside a map")?;
                    out.extend((b.len() as i32).to_be_bytes());
                    out.extend(b);
                }
            }
            out
        }
        // `{}` parses as an empty map; it is also an empty set.
        (Literal::Map(items), CqlType::Set(_) | CqlType::List(_)) if items.is_empty() => {
            0i32.to_be_bytes().to_vec()
        }
        _ => return Err(bad()),
    }))
}

/// The entries of a serialized `map<text, text>`.
pub fn map_text(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let int = |b: &[u8], at: usize| -> Result<usize, String> {
        b.get(at..at + 4)
            .map(|x| i32::from_be_bytes(x.try_into().expect("4 bytes")).max(0) as usize)
            .ok_or_else(|| "a truncated map".to_string())
    };
    let n = int(b, 0)?;
    let (mut at, mut out) = (4, Vec::with_capacity(n));
    for _ in 0..n {
        let mut pair = Vec::with_capacity(2);
        for _ in 0..2 {
            let len = int(b, at)?;
            let v = b.get(at + 4..at + 4 + len).ok_or("a truncated map")?;
            pair.push(String::from_utf8_lossy(v).into_owned());
            at += 4 + len;
        }
        let v = pair.pop().expect("two");
        out.push((pair.pop().expect("two"), v));
    }
    Ok(out)
}

/// Days since 1970-01-01 of `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<i32> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) as i32)
}

fn parse_uuid(s: &str) -> Option<Vec<u8>> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Minimal two's-complement big-endian encoding.
pub fn varint_bytes(v: i128) -> Vec<u8> {
    let b = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (cur, next) = (b[start], b[start + 1]);
        if (cur == 0 && next & 0x80 == 0) || (cur == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    b[start..].to_vec()
}

fn varint_value(b: &[u8]) -> Option<i128> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut buf = if b[0] & 0x80 != 0 {
        [0xFF; 16]
    } else {
        [0; 16]
    };
    buf[16 - b.len()..].copy_from_slice(b);
    Some(i128::from_be_bytes(buf))
}

/// Compare two serialized values of `t` in CQL order.
pub fn compare(t: &CqlType, a: &[u8], b: &[u8]) -> Ordering {
    fn int(b: &[u8]) -> i128 {
        varint_value(b).unwrap_or(0)
    }
    match t {
        CqlType::BigInt
        | CqlType::Counter
        | CqlType::Timestamp
        | CqlType::Time
        | CqlType::Int
        | CqlType::SmallInt
        | CqlType::TinyInt
        | CqlType::Varint => int(a).cmp(&int(b)),
        // Dates are unsigned with the epoch at 2^31: byte order is value order.
        CqlType::Date | CqlType::Boolean => a.cmp(b),
        CqlType::Double => f64_of(a).total_cmp(&f64_of(b)),
        CqlType::Float => f32_of(a).total_cmp(&f32_of(b)),
        CqlType::Decimal => compare_decimal(a, b),
        _ => a.cmp(b),
    }
}

fn f64_of(b: &[u8]) -> f64 {
    b.try_into().map(f64::from_be_bytes).unwrap_or(f64::NAN)
}

fn f32_of(b: &[u8]) -> f32 {
    b.try_into().map(f32::from_be_bytes).unwrap_or(f32::NAN)
}

fn compare_decimal(a: &[u8], b: &[u8]) -> Ordering {
    let parse = |x: &[u8]| -> Option<(i32, i128)> {
        let scale = i32::from_be_bytes(x.get(..4)?.try_into().ok()?);
        Some((scale, varint_value(&x[4..])?))
    };
    match (parse(a), parse(b)) {
        (Some((sa, ua)), Some((sb, ub))) => {
            let s = sa.max(sb);
            let up = |u: i128, from: i32| {
                10i128
                    .checked_pow((s - from) as u32)
                    .and_then(|m| u.checked_mul(m))
            };
            match (up(ua, sa), up(ub, sb)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a.cmp(b),
            }
        }
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-03-01"), Some(19_783));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("2024-13-01"), None);
    }

    #[test]
    fn decimals_order_by_value_across_scales() {
        let d = |s: &str| {
            literal_to_bytes(&Literal::Num(s.into()), &CqlType::Decimal)
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            compare(&CqlType::Decimal, &d("1.5"), &d("1.50")),
            Ordering::Equal
        );
        assert_eq!(
            compare(&CqlType::Decimal, &d("-0.01"), &d("0")),
            Ordering::Less
        );
        assert_eq!(
            compare(&CqlType::Decimal, &d("10"), &d("9.99")),
            Ordering::Greater
        );
    }

    #[test]
    fn varints_are_minimal() {
        assert_eq!(varint_bytes(0), vec![0]);
        assert_eq!(varint_bytes(127), vec![0x7F]);
        assert_eq!(varint_bytes(128), vec![0x00, 0x80]);
        assert_eq!(varint_bytes(-1), vec![0xFF]);
        assert_eq!(varint_bytes(-129), vec![0xFF, 0x7F]);
        assert_eq!(varint_value(&varint_bytes(-129)), Some(-129));
    }

    #[test]
    fn type_names_round_trip() {
        for s in [
            "bigint",
            "date",
            "decimal",
            "set<text>",
            "frozen<map<text, text>>",
            "list<int>",
        ] {
            assert_eq!(
                CqlType::parse(&CqlType::parse(s).unwrap().cql_name()).unwrap(),
                CqlType::parse(s).unwrap()
            );
        }
        assert!(CqlType::parse("duration").is_err());
    }
}
