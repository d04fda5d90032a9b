//! `isolate_sdk`: write edge handlers for the isolate runtime in Rust (ABI v1, see ../ABI.md).
//!
//! ```ignore
//! use isolate_sdk::{Request, Response, Error};
//!
//! fn handle(req: Request) -> Result<Response, Error> {
//!     let name = req.param("name").unwrap_or("world");
//!     Ok(Response::text(format!("hello, {}\n", name)))
//! }
//! isolate_sdk::handler!(handle);
//! ```
//!
//! Build for `wasm32-unknown-unknown` as a `cdylib` (or with `isolate build DIR`). A returned
//! `Err` becomes a response with the error's status (500 unless set) and is logged; a panic traps
//! the isolate, which the host reports as a `trap` with the panic message in the request's logs.
//!
//! Beyond the request: [`cache`] (the guest cache), [`http`] (outbound requests with
//! [`http::fetch`]), [`kv`] (named key-value stores) and [`json`] (a string quoter).

use std::fmt;

pub mod http;
pub mod json;
pub mod kv;
mod msgpack;

// The default allocator (dlmalloc) grows memory on every request's first allocation: see heap.rs.
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod heap;
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static HEAP: heap::Heap = heap::Heap;

/// An HTTP request as the guest sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Without the `?`.
    pub query: String,
    /// Names lower-case, in request order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Route parameters such as `:id`, in route order.
    pub params: Vec<(String, String)>,
    /// The module's deployment variables.
    pub vars: Vec<(String, String)>,
    /// Region the request runs in.
    pub region: String,
    /// Region the client was resolved to.
    pub client_region: String,
    pub request_id: String,
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str, ignore_case: bool) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| if ignore_case { k.eq_ignore_ascii_case(name) } else { k == name })
        .map(|(_, v)| v.as_str())
}

/// `application/x-www-form-urlencoded` decoding: `%XX` escapes and `+` as a space; a `%` not
/// followed by two hex digits is kept as it is.
fn form_decode(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i + 1..i + 3) {
            Some(&[hi, lo]) if bytes[i] == b'%' => hex(hi).and_then(|hi| hex(lo).map(|lo| hi << 4 | lo)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

impl Request {
    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        lookup(&self.headers, name, true)
    }
    /// A route parameter, e.g. `id` for `/users/:id`.
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.params, name, false)
    }
    /// A deployment variable or secret (both arrive in `vars`).
    pub fn var(&self, name: &str) -> Option<&str> {
        lookup(&self.vars, name, false)
    }
    /// The first value of the query parameter `name`, percent-decoded with `+` as a space (bytes
    /// that are not UTF-8 become U+FFFD); `None` when absent. `?flag` alone has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').filter(|pair| !pair.is_empty()).find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if form_decode(key) == name.as_bytes() {
                Some(String::from_utf8_lossy(&form_decode(value)).into_owned())
            } else {
                None
            }
        })
    }
    /// The body as UTF-8 text, or a 400 error.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|_| Error::new(400, "request body is not UTF-8"))
    }
}

/// What the handler answers. Header names and values must not contain CR, LF or NUL.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }
    /// 200 with a `text/plain; charset=utf-8` body.
    pub fn text(body: impl Into<String>) -> Self {
        Response::new(200).header("content-type", "text/plain; charset=utf-8").body(body.into())
    }
    /// 200 with an `application/json` body (already serialised).
    pub fn json(body: impl Into<String>) -> Self {
        Response::new(200).header("content-type", "application/json").body(body.into())
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A handler error: becomes a response with `status` and the message as its text body.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

impl Error {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(404, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// Any standard error converts into a 500, so `?` works on std results.
impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error::new(500, err.to_string())
    }
}

/// Log levels of the host's `isolate.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "isolate")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: usize);
}

/// Log a message through the host; it is kept with the request and tagged with its id.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        host_log(level as i32, message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{:?}] {}", level, message);
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}

/// The guest cache (ABI.md, "The guest cache"): bytes that outlive the request.
///
/// Every request runs in a fresh isolate, so nothing in memory survives it; entries put here do,
/// for their TTL, unless the host evicts them earlier. Entries are namespaced per module by the
/// host. Keys are 1 to 1024 bytes, values at most 1 MiB; anything `AsRef<[u8]>` will do for both.
///
/// ```ignore
/// use std::time::Duration;
/// use isolate_sdk::cache;
///
/// let count = match cache::get("visits")? {
///     Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
///     None => 0,
/// } + 1;
/// cache::put("visits", count.to_string(), Duration::from_secs(60))?;
/// ```
///
/// A [`CacheError`](cache::CacheError) is a `std::error::Error`, so `?` in a handler turns it into
/// a 500. Off `wasm32` (native unit tests of a handler) a per-thread map stands in for the host.
pub mod cache {
    use std::fmt;
    use std::time::Duration;

    /// The longest key, in bytes.
    pub const MAX_KEY: usize = 1024;
    /// The longest value, in bytes (1 MiB).
    pub const MAX_VALUE: usize = 1024 * 1024;
    /// The longest TTL (24 h); the shortest is 1 ms.
    pub const MAX_TTL: Duration = Duration::from_millis(86_400_000);

    /// Why the host refused a cache call. A missing key is not an error: `get` answers `Ok(None)`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum CacheError {
        /// The key is empty or longer than [`MAX_KEY`] bytes (code −2).
        BadKey,
        /// The value is longer than [`MAX_VALUE`] bytes (code −3).
        ValueTooLarge,
        /// The TTL is not within 1 ms and [`MAX_TTL`] (code −4); it counts in whole milliseconds.
        BadTtl,
        /// The host runs without a guest cache, or the entry is larger than all of it (code −5).
        Refused,
        /// A code this SDK does not know (from a newer host).
        Other(i32),
    }

    impl CacheError {
        /// The ABI's negative result code.
        pub fn code(self) -> i32 {
            match self {
                CacheError::BadKey => -2,
                CacheError::ValueTooLarge => -3,
                CacheError::BadTtl => -4,
                CacheError::Refused => -5,
                CacheError::Other(code) => code,
            }
        }

        fn from_code(code: i32) -> Self {
            match code {
                -2 => CacheError::BadKey,
                -3 => CacheError::ValueTooLarge,
                -4 => CacheError::BadTtl,
                -5 => CacheError::Refused,
                code => CacheError::Other(code),
            }
        }
    }

    impl fmt::Display for CacheError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                CacheError::BadKey => f.write_str("cache key is empty or longer than 1024 bytes"),
                CacheError::ValueTooLarge => f.write_str("cache value is longer than 1 MiB"),
                CacheError::BadTtl => f.write_str("cache TTL is not within 1 ms and 24 h"),
                CacheError::Refused => f.write_str("the host refused to cache the entry"),
                CacheError::Other(code) => write!(f, "unknown cache error {}", code),
            }
        }
    }

    impl std::error::Error for CacheError {}

    const MISS: i32 = -1;
    /// Bytes asked for first: most values fit, in one host call.
    const FIRST_TRY: usize = 256;

    /// The value stored under `key`, or `None` if there is none (never stored, expired or evicted).
    pub fn get(key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, CacheError> {
        let key = key.as_ref();
        let mut value: Vec<u8> = Vec::with_capacity(FIRST_TRY);
        loop {
            let cap = value.capacity();
            let n = unsafe { host::get(key.as_ptr(), key.len(), value.as_mut_ptr(), cap) };
            if n == MISS {
                return Ok(None);
            }
            if n < 0 {
                return Err(CacheError::from_code(n));
            }
            let n = n as usize;
            if n <= cap {
                // SAFETY: the host copied all n bytes of the value into the buffer.
                unsafe { value.set_len(n) };
                return Ok(Some(value));
            }
            // Larger than the buffer: ask again with room for all of it. Another request may replace
            // or drop the value in between, hence the loop.
            value.reserve_exact(n);
        }
    }

    /// Store `value` under `key` for `ttl` (whole milliseconds, 1 ms to 24 h), replacing any value.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, ttl: Duration) -> Result<(), CacheError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        // Out-of-range TTLs are passed on so the host judges them: u32::MAX reads as -1 there.
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX) as i32;
        match unsafe { host::put(key.as_ptr(), key.len(), value.as_ptr(), value.len(), ttl_ms) } {
            0 => Ok(()),
            code => Err(CacheError::from_code(code)),
        }
    }

    #[cfg(target_arch = "wasm32")]
    mod host {
        #[link(wasm_import_module = "isolate")]
        extern "C" {
            #[link_name = "cache_get"]
            pub fn get(key: *const u8, key_len: usize, out: *mut u8, out_cap: usize) -> i32;
            #[link_name = "cache_put"]
            pub fn put(key: *const u8, key_len: usize, value: *const u8, value_len: usize, ttl_ms: i32) -> i32;
        }
    }

    /// Off wasm there is no host: the same calls, answered from a per-thread map with the host's checks.
    #[cfg(not(target_arch = "wasm32"))]
    mod host {
        use super::{MAX_KEY, MAX_TTL, MAX_VALUE};
        use std::cell::RefCell;
        use std::collections::HashMap;
        use std::time::{Duration, Instant};

        thread_local! {
            static ENTRIES: RefCell<HashMap<Vec<u8>, (Vec<u8>, Instant)>> = RefCell::new(HashMap::new());
        }

        fn bad_key(key_len: usize) -> bool {
            key_len == 0 || key_len > MAX_KEY
        }

        pub unsafe fn get(key: *const u8, key_len: usize, out: *mut u8, out_cap: usize) -> i32 {
            if bad_key(key_len) {
                return -2;
            }
            let key = std::slice::from_raw_parts(key, key_len);
            ENTRIES.with(|entries| {
                let mut entries = entries.borrow_mut();
                match entries.get(key) {
                    Some((value, expires)) if *expires > Instant::now() => {
                        std::ptr::copy_nonoverlapping(value.as_ptr(), out, value.len().min(out_cap));
                        value.len() as i32
                    }
                    Some(_) => {
                        entries.remove(key);
                        -1
                    }
                    None => -1,
                }
            })
        }

        pub unsafe fn put(key: *const u8, key_len: usize, value: *const u8, value_len: usize, ttl_ms: i32) -> i32 {
            if bad_key(key_len) {
                return -2;
            }
            if value_len > MAX_VALUE {
                return -3;
            }
            if ttl_ms <= 0 || ttl_ms as u128 > MAX_TTL.as_millis() {
                return -4;
            }
            let key = std::slice::from_raw_parts(key, key_len).to_vec();
            let value = std::slice::from_raw_parts(value, value_len).to_vec();
            let expires = Instant::now() + Duration::from_millis(ttl_ms as u64);
            ENTRIES.with(|entries| entries.borrow_mut().insert(key, (value, expires)));
            0
        }
    }
}

/// Export a handler `fn(Request) -> Result<Response, Error>` with the ABI v1 entry points.
#[macro_export]
macro_rules! handler {
    ($handler:path) => {
        #[no_mangle]
        pub extern "C" fn isolate_abi_v1() {}

        #[no_mangle]
        pub extern "C" fn isolate_alloc(size: u32) -> u32 {
            $crate::__private::alloc(size)
        }

        #[no_mangle]
        pub extern "C" fn isolate_handle(ptr: u32, len: u32) -> u64 {
            $crate::__private::handle(ptr, len, $handler)
        }
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn alloc(size: u32) -> u32 {
        let mut buffer: Vec<u8> = Vec::with_capacity(size.max(1) as usize);
        let ptr = buffer.as_mut_ptr();
        std::mem::forget(buffer); // owned by the host's request; the whole isolate is dropped after
        ptr as usize as u32
    }

    pub fn handle(ptr: u32, len: u32, handler: fn(Request) -> Result<Response, Error>) -> u64 {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("panic: {}", info))));
        let input = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
        let response = match msgpack::decode_request(input) {
            Ok(request) => match handler(request) {
                Ok(response) => response,
                Err(err) => {
                    log(Level::Error, &format!("handler error: {}", err));
                    Response::new(err.status).header("content-type", "text/plain; charset=utf-8").body(err.message)
                }
            },
            Err(reason) => {
                log(Level::Error, &format!("malformed request envelope: {}", reason));
                Response::new(500).body("malformed request envelope\n")
            }
        };
        let out = msgpack::encode_response(&response).into_boxed_slice();
        let len = out.len() as u64;
        let ptr = Box::leak(out).as_ptr() as usize as u64;
        (ptr << 32) | len
    }
}
