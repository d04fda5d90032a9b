//! The conformance echo guest (contract: ../../abi/generate.py), written with the public Rust SDK API.
use isolate_sdk::{Error, Request, Response};

fn echo(req: Request) -> Result<Response, Error> {
    let status = match req.header("x-status") {
        Some(value) => value.parse::<u16>().map_err(|_| Error::bad_request("bad x-status"))?,
        None => 200,
    };
    let mut res = Response::new(status)
        .header("x-method", req.method.as_str())
        .header("x-path", req.path.as_str())
        .header("x-query", req.query.as_str())
        .header("x-region", req.region.as_str())
        .header("x-client-region", req.client_region.as_str())
        .header("x-request-id", req.request_id.as_str());
    for (name, value) in &req.params {
        res = res.header(format!("x-param-{}", name), value.as_str());
    }
    for (name, value) in &req.vars {
        res = res.header(format!("x-var-{}", name), value.as_str());
    }
    for (name, value) in &req.headers {
        res = res.header(format!("x-echo-{}", name), value.as_str());
    }
    let count = req.headers.len().to_string();
    Ok(res.header("x-header-count", count).body(req.body))
}

isolate_sdk::handler!(echo);
