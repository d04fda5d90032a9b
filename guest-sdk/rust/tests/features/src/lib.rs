//! Rust SDK API test guest, driven by tests/test_sdks.py.
use isolate_sdk::cache::{self, CacheError};
use isolate_sdk::{Error, Request, Response};
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

fn handle(req: Request) -> Result<Response, Error> {
    let minute = Duration::from_secs(60);
    Ok(match req.path.as_str() {
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
