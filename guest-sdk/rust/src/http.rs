//! Outbound HTTP (ABI.md, "Outbound HTTP"): one request to an origin, answered in full.
//!
//! ```ignore
//! use isolate_sdk::http::{fetch, FetchRequest};
//! use std::time::Duration;
//!
//! let res = fetch(&FetchRequest::get("https://api.example.com/items").timeout(Duration::from_secs(2)))?;
//! let kind = res.header("content-type").unwrap_or("none");
//! ```
//!
//! Outbound calls are denied unless the module's `allowed_hosts` names the origin. A
//! [`FetchError`] is a `std::error::Error`, so `?` in a handler turns it into a 500. Off `wasm32`
//! (native unit tests of a handler) there is no host: every fetch fails with `Denied`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::msgpack;

/// The most redirects a request may follow.
pub const MAX_REDIRECTS: u32 = 10;

/// One outbound request. Build it with [`FetchRequest::get`] or [`FetchRequest::new`] and the
/// builder methods; the fields are public too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// An RFC 9110 token such as `GET` or `POST`.
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Sent in order. `host`, `content-length`, `x-request-id`, `traceparent` and hop-by-hop
    /// headers are set (or dropped) by the host.
    pub headers: Vec<(String, String)>,
    /// Sent with `content-length`.
    pub body: Vec<u8>,
    /// Redirects to follow, 0 to [`MAX_REDIRECTS`]; with 0 a 3xx answer is returned as it is.
    pub redirects: u32,
    /// This call's timeout; zero (the default) means the module's `outbound_timeout`.
    pub timeout: Duration,
}

impl FetchRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        FetchRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            redirects: 0,
            timeout: Duration::ZERO,
        }
    }
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        FetchRequest::new("GET", url)
    }
    /// Add a header (duplicates are kept).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    /// Follow up to `n` redirects (0 to 10; the host refuses more as `BadRequest`).
    pub fn redirects(mut self, n: u32) -> Self {
        self.redirects = n;
        self
    }
    /// This call's timeout, in whole milliseconds (a nonzero duration under 1 ms counts as 1 ms);
    /// one above the module's `outbound_timeout` means that limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn timeout_ms(&self) -> u32 {
        if self.timeout.is_zero() {
            return 0;
        }
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX).max(1)
    }
}

/// The origin's answer, read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    pub status: u16,
    /// Names lower-case, in the origin's order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// De-chunked, never decompressed.
    pub body: Vec<u8>,
    /// The URL that answered, after redirects.
    pub url: String,
}

impl FetchResponse {
    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::lookup(&self.headers, name, true)
    }
    /// The body as text; bytes that are not UTF-8 become U+FFFD.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Why a fetch failed: the ABI's `http_send` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    /// The request is not valid: URL, method, headers, redirects (code −1).
    BadRequest,
    /// The URL's scheme, host or port is not in the module's `allowed_hosts` (code −2).
    Denied,
    /// The host resolves to an internal address no `allowed_hosts` entry names (code −3).
    BlockedAddress,
    /// The module's `outbound_requests` calls were already made for this request (code −4).
    TooManyRequests,
    /// The name does not resolve, or the connection or TLS handshake failed (code −5).
    Unreachable,
    /// The call's timeout passed before the whole answer arrived (code −6).
    Timeout,
    /// The answer's body exceeds the module's `outbound_response_size` (code −7).
    TooLarge,
    /// The origin's answer is not valid HTTP/1.1 (code −8).
    Protocol,
    /// More redirects than the request allowed (code −9).
    TooManyRedirects,
    /// A code this SDK does not know (from a newer host), or 0 when the host's answer could not be
    /// read; named `unknown`.
    Other(i32),
}

impl FetchError {
    /// The ABI's negative result code.
    pub fn code(self) -> i32 {
        match self {
            FetchError::BadRequest => -1,
            FetchError::Denied => -2,
            FetchError::BlockedAddress => -3,
            FetchError::TooManyRequests => -4,
            FetchError::Unreachable => -5,
            FetchError::Timeout => -6,
            FetchError::TooLarge => -7,
            FetchError::Protocol => -8,
            FetchError::TooManyRedirects => -9,
            FetchError::Other(code) => code,
        }
    }

    /// The ABI's name of the error, such as `denied`; `unknown` for [`FetchError::Other`].
    pub fn name(self) -> &'static str {
        match self {
            FetchError::BadRequest => "bad_request",
            FetchError::Denied => "denied",
            FetchError::BlockedAddress => "blocked_address",
            FetchError::TooManyRequests => "too_many_requests",
            FetchError::Unreachable => "unreachable",
            FetchError::Timeout => "timeout",
            FetchError::TooLarge => "too_large",
            FetchError::Protocol => "protocol",
            FetchError::TooManyRedirects => "too_many_redirects",
            FetchError::Other(_) => "unknown",
        }
    }

    /// The error for an ABI code.
    pub fn from_code(code: i32) -> Self {
        match code {
            -1 => FetchError::BadRequest,
            -2 => FetchError::Denied,
            -3 => FetchError::BlockedAddress,
            -4 => FetchError::TooManyRequests,
            -5 => FetchError::Unreachable,
            -6 => FetchError::Timeout,
            -7 => FetchError::TooLarge,
            -8 => FetchError::Protocol,
            -9 => FetchError::TooManyRedirects,
            code => FetchError::Other(code),
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadRequest => f.write_str("fetch: the request is not valid"),
            FetchError::Denied => f.write_str("fetch: the origin is not in the module's allowed_hosts"),
            FetchError::BlockedAddress => f.write_str("fetch: the origin resolves to an internal address"),
            FetchError::TooManyRequests => f.write_str("fetch: too many outbound requests for this request"),
            FetchError::Unreachable => f.write_str("fetch: the origin is unreachable"),
            FetchError::Timeout => f.write_str("fetch: the origin did not answer in time"),
            FetchError::TooLarge => f.write_str("fetch: the origin's answer is too large"),
            FetchError::Protocol => f.write_str("fetch: the origin's answer is not valid HTTP/1.1"),
            FetchError::TooManyRedirects => f.write_str("fetch: too many redirects"),
            FetchError::Other(0) => f.write_str("fetch: the host's answer could not be read"),
            FetchError::Other(code) => write!(f, "fetch: unknown error {}", code),
        }
    }
}

impl std::error::Error for FetchError {}

/// Send `req` and wait for the whole answer (the module's `timeout` still bounds the request).
pub fn fetch(req: &FetchRequest) -> Result<FetchResponse, FetchError> {
    let envelope = msgpack::encode_fetch(req, req.timeout_ms());
    let n = unsafe { host::send(envelope.as_ptr(), envelope.len()) };
    drop(envelope);
    if n < 0 {
        return Err(FetchError::from_code(n));
    }
    let n = n as usize;
    let mut answer: Vec<u8> = Vec::with_capacity(n);
    let taken = unsafe { host::take(answer.as_mut_ptr(), n) };
    if taken < 0 || taken as usize != n {
        return Err(FetchError::Other(0)); // the host broke the ABI: nothing held, or another length
    }
    // SAFETY: the host copied all n bytes of the answer into the buffer.
    unsafe { answer.set_len(n) };
    msgpack::decode_fetch(&answer).map_err(|_| FetchError::Other(0))
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "isolate")]
    extern "C" {
        #[link_name = "http_send"]
        pub fn send(req: *const u8, req_len: usize) -> i32;
        #[link_name = "http_take"]
        pub fn take(out: *mut u8, out_cap: usize) -> i32;
    }
}

/// Off wasm there is no host and no allow-list: every call is denied.
#[cfg(not(target_arch = "wasm32"))]
mod host {
    pub unsafe fn send(_req: *const u8, _req_len: usize) -> i32 {
        -2
    }
    pub unsafe fn take(_out: *mut u8, _out_cap: usize) -> i32 {
        -1
    }
}
