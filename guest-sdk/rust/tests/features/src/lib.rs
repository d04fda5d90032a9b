//! Rust SDK API test guest, driven by tests/test_sdks.py.
use isolate_sdk::{Error, Request, Response};

fn text(value: Option<&str>) -> Response {
    Response::new(200).body(value.unwrap_or("missing"))
}

fn handle(req: Request) -> Result<Response, Error> {
    Ok(match req.path.as_str() {
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
