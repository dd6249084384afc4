//! CQL native protocol v4 framing and the primitive notations of its spec (`[short]`,
//! `[string]`, `[bytes]`, ...). Only what requests carry and responses need.

use std::collections::BTreeMap;

pub const HEADER_LEN: usize = 9;
/// Largest body we accept (the spec's limit is 256 MiB).
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// Request and response opcodes of protocol v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Error,
    Startup,
    Ready,
    Authenticate,
    Options,
    Supported,
    Query,
    Result,
    Prepare,
    Execute,
    Register,
    Event,
    Batch,
    AuthChallenge,
    AuthResponse,
    AuthSuccess,
}

impl Opcode {
    pub fn from_u8(b: u8) -> Option<Self> {
        use Opcode::*;
        Some(match b {
            0x00 => Error,
            0x01 => Startup,
            0x02 => Ready,
            0x03 => Authenticate,
            0x05 => Options,
            0x06 => Supported,
            0x07 => Query,
            0x08 => Result,
            0x09 => Prepare,
            0x0A => Execute,
            0x0B => Register,
            0x0C => Event,
            0x0D => Batch,
            0x0E => AuthChallenge,
            0x0F => AuthResponse,
            0x10 => AuthSuccess,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        use Opcode::*;
        match self {
            Error => 0x00,
            Startup => 0x01,
            Ready => 0x02,
            Authenticate => 0x03,
            Options => 0x05,
            Supported => 0x06,
            Query => 0x07,
            Result => 0x08,
            Prepare => 0x09,
            Execute => 0x0A,
            Register => 0x0B,
            Event => 0x0C,
            Batch => 0x0D,
            AuthChallenge => 0x0E,
            AuthResponse => 0x0F,
            AuthSuccess => 0x10,
        }
    }
}

/// A request frame's header fields we use.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub version: u8,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub length: usize,
}

pub fn parse_header(b: &[u8; HEADER_LEN]) -> Header {
    Header {
        version: b[0],
        flags: b[1],
        stream: i16::from_be_bytes([b[2], b[3]]),
        opcode: b[4],
        length: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize,
    }
}

/// A whole response frame: v4 response header plus `body`.
pub fn response(stream: i16, opcode: Opcode, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(0x84);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(opcode.as_u8());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A response frame with client warnings (header flag 0x08, a `[string list]` before the
/// body), or without when there are none.
pub fn response_with_warnings(
    stream: i16,
    opcode: Opcode,
    body: &[u8],
    warnings: &[String],
) -> Vec<u8> {
    if warnings.is_empty() {
        return response(stream, opcode, body);
    }
    let mut w = Writer::default();
    w.u16(warnings.len() as u16);
    for s in warnings {
        w.string(s);
    }
    w.buf.extend_from_slice(body);
    let mut out = response(stream, opcode, &w.buf);
    out[1] |= 0x08;
    out
}

/// A malformed request body.
#[derive(Debug)]
pub struct Malformed(pub String);

pub type Parse<T> = Result<T, Malformed>;

/// Cursor over a request body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A `[value]`: bytes, null (-1) or unset (-2).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bytes(Vec<u8>),
    Null,
    Unset,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Malformed(format!(
                "body ends after {} bytes, {} more expected",
                self.buf.len(),
                n
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Parse<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Parse<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Parse<i64> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn string(&mut self) -> Parse<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("[string] is not UTF-8".into()))
    }

    pub fn long_string(&mut self) -> Parse<String> {
        let n = self.i32()?;
        if n < 0 {
            return Err(Malformed("negative [long string] length".into()));
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("[long string] is not UTF-8".into()))
    }

    pub fn short_bytes(&mut self) -> Parse<Vec<u8>> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    pub fn bytes(&mut self) -> Parse<Option<Vec<u8>>> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }

    pub fn value(&mut self) -> Parse<Value> {
        let n = self.i32()?;
        match n {
            -1 => Ok(Value::Null),
            -2 => Ok(Value::Unset),
            n if n < 0 => Err(Malformed(format!("invalid [value] length {n}"))),
            n => Ok(Value::Bytes(self.take(n as usize)?.to_vec())),
        }
    }

    pub fn string_map(&mut self) -> Parse<BTreeMap<String, String>> {
        let n = self.u16()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.string()?;
            m.insert(k, v);
        }
        Ok(m)
    }
}

/// The `<query_parameters>` of QUERY and EXECUTE.
#[derive(Debug, Clone)]
pub struct QueryParams {
    pub consistency: u16,
    pub values: Vec<Value>,
    pub skip_metadata: bool,
    pub page_size: Option<i32>,
    pub paging_state: Option<Vec<u8>>,
    /// The client's write timestamp for the request (flag 0x20), µs.
    pub default_timestamp: Option<i64>,
}

pub fn query_params(r: &mut Reader) -> Parse<QueryParams> {
    let consistency = r.u16()?;
    let flags = r.u8()?;
    if flags & 0x40 != 0 {
        return Err(Malformed(
            "named values (flag 0x40) are not supported by cql-test-server".into(),
        ));
    }
    let mut values = Vec::new();
    if flags & 0x01 != 0 {
        let n = r.u16()?;
        for _ in 0..n {
            values.push(r.value()?);
        }
    }
    let page_size = if flags & 0x04 != 0 {
        Some(r.i32()?)
    } else {
        None
    };
    let paging_state = if flags & 0x08 != 0 { r.bytes()? } else { None };
    if flags & 0x10 != 0 {
        r.u16()?;
    }
    let default_timestamp = if flags & 0x20 != 0 {
        Some(r.i64()?)
    } else {
        None
    };
    Ok(QueryParams {
        consistency,
        values,
        skip_metadata: flags & 0x02 != 0,
        page_size,
        paging_state,
        default_timestamp,
    })
}

/// Response body builder.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u16(s.len() as u16);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub fn short_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u16(b.len() as u16);
        self.buf.extend_from_slice(b);
        self
    }

    pub fn bytes(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            None => self.i32(-1),
            Some(b) => {
                self.i32(b.len() as i32);
                self.buf.extend_from_slice(b);
                self
            }
        }
    }

    pub fn string_multimap(&mut self, m: &[(&str, &[&str])]) -> &mut Self {
        self.u16(m.len() as u16);
        for (k, vs) in m {
            self.string(k);
            self.u16(vs.len() as u16);
            for v in *vs {
                self.string(v);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_round_trip_values_paging_and_flags() {
        let mut w = Writer::default();
        w.u16(0x0001).u8(0x01 | 0x04 | 0x08 | 0x20);
        w.u16(3).bytes(Some(b"ab")).i32(-1).i32(-2);
        w.i32(100).bytes(Some(b"state"));
        w.buf.extend_from_slice(&7i64.to_be_bytes());
        let p = query_params(&mut Reader::new(&w.buf)).unwrap();
        assert_eq!(p.consistency, 1);
        assert_eq!(
            p.values,
            vec![Value::Bytes(b"ab".to_vec()), Value::Null, Value::Unset]
        );
        assert_eq!(p.page_size, Some(100));
        assert_eq!(p.paging_state.as_deref(), Some(&b"state"[..]));
        assert!(!p.skip_metadata);
    }

    #[test]
    fn a_truncated_body_is_malformed_not_a_panic() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(r.string().is_err());
    }
}
