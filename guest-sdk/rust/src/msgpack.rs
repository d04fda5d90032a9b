//! The msgpack subset of ABI v1: decode the request map, encode the response in shortest forms.

use super::{Request, Response};

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
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
    let mut r = Reader { data, pos: 0 };
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

fn put_str(out: &mut Vec<u8>, s: &str) {
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
