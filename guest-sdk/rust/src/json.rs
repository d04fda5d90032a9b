//! Small JSON helpers, for handlers that build JSON text by hand (see `Response::json`).
//!
//! ```ignore
//! use isolate_sdk::{json, Response};
//!
//! let body = format!("{{\"name\":{}}}", json::quote("say \"hi\"\n"));   // {"name":"say \"hi\"\u000a"}
//! let res = Response::json(body).status(201);
//! ```

/// `s` as a JSON string literal, quotes included: `"` and `\` are escaped with a backslash and
/// control characters (U+0000 to U+001F) as `\u00XX` (RFC 8259); everything else is kept as it is.
pub fn quote(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut plain = 0; // start of the run of characters copied unchanged
    for (i, b) in s.bytes().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&s[plain..i]);
            plain = i + 1;
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    out.push_str("\\u00");
                    out.push(HEX[(b >> 4) as usize] as char);
                    out.push(HEX[(b & 15) as usize] as char);
                }
            }
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
    out
}
