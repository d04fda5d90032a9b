//! The msgpack subset of ABI v1: decode the request map, encode the response in shortest forms;
//! encode outbound requests and decode their answers and key-value pages.

use super::{Request, Response};

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

pub(crate) type R<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }
    /// Whether the next value is nil (not consumed).
    fn at_nil(&self) -> bool {
        self.data.get(self.pos) == Some(&0xc0)
    }
    /// Any msgpack integer that fits an i64.
    fn int(&mut self) -> R<i64> {
        let tag = self.byte()?;
        Ok(match tag {
            0x00..=0x7f => tag as i64,
            0xe0..=0xff => tag as i8 as i64,
            0xcc => self.uint(1)? as i64,
            0xcd => self.uint(2)? as i64,
            0xce => self.uint(4)? as i64,
            0xcf => {
                let raw = self.take(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(raw);
                i64::try_from(u64::from_be_bytes(b)).map_err(|_| "integer out of range")?
            }
            0xd0 => self.take(1)?[0] as i8 as i64,
            0xd1 => {
                let raw = self.take(2)?;
                i16::from_be_bytes([raw[0], raw[1]]) as i64
            }
            0xd2 => {
                let raw = self.take(4)?;
                i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as i64
            }
            0xd3 => {
                let raw = self.take(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(raw);
                i64::from_be_bytes(b)
            }
            _ => return Err("expected an integer"),
        })
    }
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err("truncated");
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn uint(&mut self, n: usize) -> R<usize> {
        Ok(self.take(n)?.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    }
    fn bytes(&mut self) -> R<&'a [u8]> {
        let tag = self.byte()?;
        let n = match tag {
            0xa0..=0xbf => (tag & 0x1f) as usize,
            0xd9 | 0xc4 => self.uint(1)?,
            0xda | 0xc5 => self.uint(2)?,
            0xdb | 0xc6 => self.uint(4)?,
            0xc0 => 0,
            _ => return Err("expected str or bin"),
        };
        self.take(n)
    }
    fn string(&mut self) -> R<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "invalid UTF-8")
    }
    fn container(&mut self, map: bool) -> R<usize> {
        let tag = self.byte()?;
        match (map, tag) {
            (true, 0x80..=0x8f) | (false, 0x90..=0x9f) => Ok((tag & 0x0f) as usize),
            (true, 0xde) | (false, 0xdc) => self.uint(2),
            (true, 0xdf) | (false, 0xdd) => self.uint(4),
            _ => Err(if map { "expected map" } else { "expected array" }),
        }
    }
    fn pairs(&mut self, map: bool) -> R<Vec<(String, String)>> {
        let n = self.container(map)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            if !map && self.container(false)? != 2 {
                return Err("expected a [name, value] pair");
            }
            out.push((self.string()?, self.string()?));
        }
        Ok(out)
    }
    fn skip(&mut self, depth: usize) -> R<()> {
        if depth > 64 {
            return Err("nested too deep");
        }
        let tag = *self.data.get(self.pos).ok_or("truncated")?;
        match tag {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {
                self.pos += 1;
            }
            0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6 => {
                self.bytes()?;
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                for _ in 0..self.container(false)? {
                    self.skip(depth + 1)?;
                }
            }
            0x80..=0x8f | 0xde | 0xdf => {
                for _ in 0..2 * self.container(true)? {
                    self.skip(depth + 1)?;
                }
            }
            0xcc | 0xd0 => { self.take(2)?; }
            0xcd | 0xd1 | 0xd4 => { self.take(3)?; }
            0xd5 => { self.take(4)?; }
            0xca | 0xce | 0xd2 => { self.take(5)?; }
            0xd6 => { self.take(6)?; }
            0xcb | 0xcf | 0xd3 => { self.take(9)?; }
            0xd7 => { self.take(10)?; }
            0xd8 => { self.take(18)?; }
            _ => return Err("unsupported msgpack type"),
        }
        Ok(())
    }
}

pub fn decode_request(data: &[u8]) -> R<Request> {
    let mut r = Reader::new(data);
    let mut req = Request::default();
    for _ in 0..r.container(true)? {
        let key = r.bytes()?;
        match key {
            b"method" => req.method = r.string()?,
            b"path" => req.path = r.string()?,
            b"query" => req.query = r.string()?,
            b"headers" => req.headers = r.pairs(false)?,
            b"body" => req.body = r.bytes()?.to_vec(),
            b"params" => req.params = r.pairs(true)?,
            b"vars" => req.vars = r.pairs(true)?,
            b"region" => req.region = r.string()?,
            b"client_region" => req.client_region = r.string()?,
            b"request_id" => req.request_id = r.string()?,
            _ => r.skip(0)?, // unknown keys are ignored, as ABI.md requires
        }
    }
    Ok(req)
}

fn put_len(out: &mut Vec<u8>, n: usize, tags: [u8; 3]) {
    if n < 0x100 && tags[0] != 0 {
        out.push(tags[0]);
        out.push(n as u8);
    } else if n < 0x10000 {
        out.push(tags[1]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(tags[2]);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    if s.len() < 32 {
        out.push(0xa0 | s.len() as u8);
    } else {
        put_len(out, s.len(), [0xd9, 0xda, 0xdb]);
    }
    out.extend_from_slice(s.as_bytes());
}

pub fn encode_response(res: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + res.body.len());
    out.push(0x83);
    put_str(&mut out, "status");
    let status = res.status as usize;
    if status < 0x80 {
        out.push(status as u8);
    } else if status < 0x100 {
        out.push(0xcc);
        out.push(status as u8);
    } else {
        out.push(0xcd);
        out.extend_from_slice(&(status as u16).to_be_bytes());
    }
    put_str(&mut out, "headers");
    if res.headers.len() < 16 {
        out.push(0x90 | res.headers.len() as u8);
    } else {
        put_len(&mut out, res.headers.len(), [0, 0xdc, 0xdd]);
    }
    for (name, value) in &res.headers {
        out.push(0x92);
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    put_str(&mut out, "body");
    put_len(&mut out, res.body.len(), [0xc4, 0xc5, 0xc6]);
    out.extend_from_slice(&res.body);
    out
}

pub(crate) fn put_bin(out: &mut Vec<u8>, data: &[u8]) {
    put_len(out, data.len(), [0xc4, 0xc5, 0xc6]);
    out.extend_from_slice(data);
}

/// A map (`0x80`) or array (`0x90`) header of `n` entries.
pub(crate) fn put_container(out: &mut Vec<u8>, n: usize, map: bool) {
    if n < 16 {
        out.push(if map { 0x80 } else { 0x90 } | n as u8);
    } else if map {
        put_len(out, n, [0, 0xde, 0xdf]);
    } else {
        put_len(out, n, [0, 0xdc, 0xdd]);
    }
}

pub(crate) fn put_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.push(0xcc);
        out.push(n as u8);
    } else if n < 0x10000 {
        out.push(0xcd);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n < 0x1_0000_0000 {
        out.push(0xce);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// The outbound request envelope (ABI.md, "Outbound HTTP"); `timeout_ms` 0 is left out (the default).
pub(crate) fn encode_fetch(req: &crate::http::FetchRequest, timeout_ms: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + req.url.len() + req.body.len());
    let fields = 5 + usize::from(timeout_ms > 0);
    put_container(&mut out, fields, true);
    put_str(&mut out, "method");
    put_str(&mut out, &req.method);
    put_str(&mut out, "url");
    put_str(&mut out, &req.url);
    put_str(&mut out, "headers");
    put_container(&mut out, req.headers.len(), false);
    for (name, value) in &req.headers {
        out.push(0x92);
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    put_str(&mut out, "body");
    put_bin(&mut out, &req.body);
    put_str(&mut out, "redirects");
    put_uint(&mut out, req.redirects as u64);
    if timeout_ms > 0 {
        put_str(&mut out, "timeout_ms");
        put_uint(&mut out, timeout_ms as u64);
    }
    out
}

/// The outbound response envelope: `status`, `headers`, `body` and `url`.
pub(crate) fn decode_fetch(data: &[u8]) -> R<crate::http::FetchResponse> {
    let mut r = Reader::new(data);
    let mut res = crate::http::FetchResponse { status: 0, headers: Vec::new(), body: Vec::new(), url: String::new() };
    for _ in 0..r.container(true)? {
        match r.bytes()? {
            b"status" => res.status = u16::try_from(r.int()?).map_err(|_| "status out of range")?,
            b"headers" => res.headers = r.pairs(false)?,
            b"body" => res.body = r.bytes()?.to_vec(),
            b"url" => res.url = r.string()?,
            _ => r.skip(0)?,
        }
    }
    Ok(res)
}

/// A key-value page: `{"keys": [bin, ...], "cursor": bin | nil}`.
pub(crate) fn decode_page(data: &[u8]) -> R<crate::kv::Page> {
    let mut r = Reader::new(data);
    let mut page = crate::kv::Page { keys: Vec::new(), cursor: None };
    for _ in 0..r.container(true)? {
        match r.bytes()? {
            b"keys" => {
                let n = r.container(false)?;
                page.keys = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    page.keys.push(r.bytes()?.to_vec());
                }
            }
            b"cursor" => {
                page.cursor = if r.at_nil() {
                    r.pos += 1;
                    None
                } else {
                    Some(r.bytes()?.to_vec())
                }
            }
            _ => r.skip(0)?,
        }
    }
    Ok(page)
}

/// A key-value page as the host encodes it (for the stand-in host off wasm32).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn encode_page(keys: &[Vec<u8>], cursor: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    put_container(&mut out, 2, true);
    put_str(&mut out, "keys");
    put_container(&mut out, keys.len(), false);
    for key in keys {
        put_bin(&mut out, key);
    }
    put_str(&mut out, "cursor");
    match cursor {
        Some(cursor) => put_bin(&mut out, cursor),
        None => out.push(0xc0),
    }
    out
}
