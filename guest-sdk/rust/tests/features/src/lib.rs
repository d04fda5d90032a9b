//! Rust SDK API test guest, driven by tests/test_sdks.py and tests/test_guest_io.py.
use isolate_sdk::cache::{self, CacheError};
use isolate_sdk::http::{self, FetchRequest};
use isolate_sdk::kv::{self, KvError, Store};
use isolate_sdk::{json, Error, Request, Response};
use std::time::Duration;

fn text(value: Option<&str>) -> Response {
    Response::new(200).body(value.unwrap_or("missing"))
}

/// A cache failure: 500 with "<code>: <message>".
fn cache_error(err: CacheError) -> Response {
    Response::new(500).body(format!("{}: {}", err.code(), err))
}

fn answer(result: Result<Response, CacheError>) -> Response {
    result.unwrap_or_else(cache_error)
}

/// A visit counter that outlives the request: each request runs in a fresh isolate.
fn visits() -> Result<Response, CacheError> {
    let count = match cache::get("visits")? {
        Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
        None => 0,
    } + 1;
    cache::put("visits", count.to_string(), Duration::from_secs(60))?;
    Ok(Response::new(200).body(count.to_string()))
}

// ---------- guest I/O: fetch, kv, variables and secrets, query strings, JSON ----------

fn answer_text(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response::new(status).body(body)
}

/// "<code> <name>", e.g. "-2 denied".
fn io_error(status: u16, code: i32, name: &str) -> Response {
    answer_text(status, format!("{} {}", code, name))
}

fn kv_error(err: KvError) -> Response {
    io_error(500, err.code(), err.name())
}

fn number(req: &Request, name: &str, fallback: u64) -> u64 {
    req.query_param(name).and_then(|text| text.parse().ok()).unwrap_or(fallback)
}

/// `/fetch?url=U[&method=M][&redirects=N][&timeout_ms=T]`: the origin's answer, described in headers.
fn fetch_one(req: &Request) -> Response {
    let url = match req.query_param("url") {
        Some(url) => url,
        None => return answer_text(400, "missing url"),
    };
    let method = req.query_param("method").unwrap_or_else(|| req.method.clone()); // default: the incoming method
    let call = FetchRequest::new(method, url)
        .header("x-probe", "features")
        .body(req.body.clone())
        .redirects(number(req, "redirects", 0) as u32)
        .timeout(Duration::from_millis(number(req, "timeout_ms", 0)));
    match http::fetch(&call) {
        Ok(got) => Response::new(200)
            .header("x-fetch-status", got.status.to_string())
            .header("x-fetch-url", got.url.as_str())
            .header("x-fetch-origin", got.header("x-origin").unwrap_or("none"))
            .body(got.body),
        Err(err) => io_error(502, err.code(), err.name()),
    }
}

/// `/fetch-many?url=U&n=N`: N fetches one after another, "ok N" or the first error "after K".
fn fetch_many(req: &Request) -> Response {
    let url = match req.query_param("url") {
        Some(url) => url,
        None => return answer_text(400, "missing url"),
    };
    let n = number(req, "n", 1);
    let call = FetchRequest::get(url);
    for done in 0..n {
        if let Err(err) = http::fetch(&call) {
            return answer_text(502, format!("{} {} after {}", err.code(), err.name(), done));
        }
    }
    answer_text(200, format!("ok {}", n))
}

/// `/kv/count?store=S&n=N`: N kv_exists calls, to meet the kv_operations limit.
fn kv_count(req: &Request, store: Result<Store, KvError>) -> Response {
    let n = number(req, "n", 1);
    let after = |err: KvError, done: u64| answer_text(500, format!("{} {} after {}", err.code(), err.name(), done));
    let store = match store {
        Ok(store) => store,
        Err(err) => return after(err, 0),
    };
    for done in 0..n {
        if let Err(err) = store.exists("k") {
            return after(err, done);
        }
    }
    answer_text(200, format!("ok {}", n))
}

fn kv_request(req: &Request) -> Response {
    let name = match req.query_param("store") {
        Some(name) => name,
        None => return answer_text(400, "missing store"),
    };
    let store = Store::open(&name);
    if req.path == "/kv/count" {
        return kv_count(req, store);
    }
    let store = match store {
        Ok(store) => store,
        Err(err) => return kv_error(err),
    };
    let result = match req.path.as_str() {
        "/kv/long-key" => store.get(vec![b'k'; kv::MAX_KEY + 1]).map(|_| answer_text(200, "unexpected")),
        "/kv/list" => {
            let prefix = req.query_param("prefix").unwrap_or_default();
            let cursor = req.query_param("cursor");
            store.list(prefix, cursor.as_ref().map(|c| c.as_bytes())).map(|page| {
                let mut res = answer_text(200, page.keys.join(&b"\n"[..]));
                if let Some(cursor) = page.cursor {
                    res = res.header("x-cursor", String::from_utf8_lossy(&cursor));
                }
                res
            })
        }
        path => {
            let key = match req.query_param("key") {
                Some(key) => key,
                None => return answer_text(400, "missing key"),
            };
            match path {
                "/kv/set" => store.set(&key, &req.body).map(|()| answer_text(200, "ok")),
                "/kv/big" => {
                    let size = number(req, "size", 0) as usize;
                    store.set(&key, vec![b'x'; size]).map(|()| answer_text(200, "ok"))
                }
                "/kv/get" => store.get(&key).map(|value| match value {
                    Some(value) => answer_text(200, value),
                    None => io_error(404, KvError::NotFound.code(), KvError::NotFound.name()),
                }),
                "/kv/delete" => store.delete(&key).map(|()| answer_text(200, "ok")),
                "/kv/exists" => store.exists(&key).map(|found| answer_text(200, if found { "1" } else { "0" })),
                _ => Ok(answer_text(404, "unknown")),
            }
        }
    };
    result.unwrap_or_else(kv_error)
}

/// `/secret?name=N` (a variable or secret) and `/query?name=N` (a query parameter).
fn named(req: &Request, query: bool) -> Response {
    let name = req.query_param("name");
    let value = name.and_then(|name| if query { req.query_param(&name) } else { req.var(&name).map(String::from) });
    match value {
        Some(value) => answer_text(200, value),
        None => answer_text(404, "missing"),
    }
}

/// `/json?q=TEXT`: 201 `{"echo":<TEXT quoted>}`.
fn json_echo(req: &Request) -> Response {
    let quoted = req.query_param("q").map(|q| json::quote(&q)).unwrap_or_else(|| "null".to_string());
    Response::json(format!("{{\"echo\":{}}}", quoted)).status(201)
}

fn handle(req: Request) -> Result<Response, Error> {
    let minute = Duration::from_secs(60);
    if req.path.starts_with("/kv/") {
        return Ok(kv_request(&req));
    }
    Ok(match req.path.as_str() {
        "/fetch" => fetch_one(&req),
        "/fetch-many" => fetch_many(&req),
        "/secret" => named(&req, false),
        "/query" => named(&req, true),
        "/json" => json_echo(&req),
        "/visits" => answer(visits()),
        "/cache/put" => answer(cache::put(b"blob", &req.body, minute).map(|()| Response::new(204))),
        "/cache/get" => answer(cache::get(b"blob").map(|value| match value {
            Some(bytes) => Response::new(200).body(bytes),
            None => Response::new(404).body("missing"),
        })),
        "/cache/bad-ttl" => cache_error(cache::put("k", "v", Duration::ZERO).unwrap_err()),
        "/cache/bad-key" => cache_error(cache::put("", "v", minute).unwrap_err()),
        "/cache/long-key" => cache_error(cache::get(vec![b'k'; cache::MAX_KEY + 1]).unwrap_err()),
        "/cache/try" => {
            cache::put("k", "v", Duration::from_micros(999))?; // under 1 ms: `?` makes the error a 500
            Response::new(204)
        }
        "/header" => text(req.header("X-Mixed-Case")),
        "/param" => text(req.param("id")),
        "/var" => text(req.var("k")),
        "/log" => {
            isolate_sdk::warn("feature log");
            Response::new(204)
        }
        "/fail" => return Err(Error::not_found("feature failure")),
        "/parse" => text(Some(&"x".parse::<u32>()?.to_string())), // std error via `?` becomes a 500
        "/crash" => panic!("feature panic"),
        _ => Response::new(404).body("unknown"),
    })
}

isolate_sdk::handler!(handle);
