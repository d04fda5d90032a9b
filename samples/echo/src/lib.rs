//! echo: answers with the request itself as JSON (method, path, query, headers, params, body).
use isolate_sdk::{Error, Request, Response};

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_pairs(out: &mut String, pairs: &[(String, String)]) {
    out.push('[');
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        json_string(out, name);
        out.push(',');
        json_string(out, value);
        out.push(']');
    }
    out.push(']');
}

fn echo(req: Request) -> Result<Response, Error> {
    if req.path.ends_with("/fail") {
        return Err(Error::new(418, "asked to fail"));
    }
    if req.path.ends_with("/panic") {
        panic!("asked to panic on {}", req.path);
    }
    let mut out = String::from("{\"method\":");
    json_string(&mut out, &req.method);
    out.push_str(",\"path\":");
    json_string(&mut out, &req.path);
    out.push_str(",\"query\":");
    json_string(&mut out, &req.query);
    out.push_str(",\"headers\":");
    json_pairs(&mut out, &req.headers);
    out.push_str(",\"params\":");
    json_pairs(&mut out, &req.params);
    out.push_str(",\"body\":");
    json_string(&mut out, req.text()?);
    out.push_str(",\"request_id\":");
    json_string(&mut out, &req.request_id);
    out.push('}');
    Ok(Response::json(out))
}

isolate_sdk::handler!(echo);
