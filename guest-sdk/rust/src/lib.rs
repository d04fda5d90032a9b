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

use std::fmt;

mod msgpack;

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

impl Request {
    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        lookup(&self.headers, name, true)
    }
    /// A route parameter, e.g. `id` for `/users/:id`.
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.params, name, false)
    }
    /// A deployment variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        lookup(&self.vars, name, false)
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
