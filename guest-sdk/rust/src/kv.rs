//! Key-value stores (ABI.md, "Key-value stores"): named, persistent stores of bytes.
//!
//! ```ignore
//! use isolate_sdk::kv::Store;
//!
//! let store = Store::open("default")?;            // only a store the module was granted
//! store.set("greeting", "hello")?;                  // durable once it returns Ok
//! let value = store.get("greeting")?;               // Some(b"hello".to_vec())
//! let mut cursor = None;
//! loop {
//!     let page = store.list("user:", cursor.as_deref())?;
//!     for key in &page.keys { /* ... */ }
//!     cursor = match page.cursor { Some(next) => Some(next), None => break };
//! }
//! ```
//!
//! A store is shared by every module granted it, and a write survives a restart. Keys are 1 to
//! 1024 bytes, values at most 1 MiB; anything `AsRef<[u8]>` will do for both. A [`KvError`] is a
//! `std::error::Error`, so `?` in a handler turns it into a 500. Off `wasm32` (native unit tests of
//! a handler) a per-thread map stands in for the host, with every store granted.

use std::fmt;

use crate::msgpack;

/// The longest key (and prefix, and cursor), in bytes.
pub const MAX_KEY: usize = 1024;
/// The longest value, in bytes (1 MiB).
pub const MAX_VALUE: usize = 1024 * 1024;
/// The most keys in one page of [`Store::list`].
pub const PAGE_KEYS: usize = 100;

/// Why the host refused a key-value call. A missing key is not an error: `get` answers `Ok(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// No such key (code −1); `get` answers `Ok(None)` instead, so only your own code returns it.
    NotFound,
    /// The key is empty or longer than [`MAX_KEY`] bytes, or a prefix or cursor is longer (code −2).
    BadKey,
    /// The value is longer than [`MAX_VALUE`] bytes (code −3).
    TooLarge,
    /// `open`: the module was not granted this store (`key_value_stores`) (code −4).
    NoSuchStore,
    /// The store would exceed its size (`kv_store_size`) (code −5).
    StoreFull,
    /// The store cannot be read or written; the host logs why (code −6).
    Storage,
    /// The module's `kv_operations` calls were already made for this request (code −7).
    TooManyOperations,
    /// A code this SDK does not know (from a newer host), or 0 when the host's answer could not be
    /// read; named `unknown`.
    Other(i32),
}

impl KvError {
    /// The ABI's negative result code.
    pub fn code(self) -> i32 {
        match self {
            KvError::NotFound => -1,
            KvError::BadKey => -2,
            KvError::TooLarge => -3,
            KvError::NoSuchStore => -4,
            KvError::StoreFull => -5,
            KvError::Storage => -6,
            KvError::TooManyOperations => -7,
            KvError::Other(code) => code,
        }
    }

    /// The ABI's name of the error, such as `bad_key`; `unknown` for [`KvError::Other`].
    pub fn name(self) -> &'static str {
        match self {
            KvError::NotFound => "not_found",
            KvError::BadKey => "bad_key",
            KvError::TooLarge => "too_large",
            KvError::NoSuchStore => "no_such_store",
            KvError::StoreFull => "store_full",
            KvError::Storage => "storage",
            KvError::TooManyOperations => "too_many_operations",
            KvError::Other(_) => "unknown",
        }
    }

    /// The error for an ABI code.
    pub fn from_code(code: i32) -> Self {
        match code {
            -1 => KvError::NotFound,
            -2 => KvError::BadKey,
            -3 => KvError::TooLarge,
            -4 => KvError::NoSuchStore,
            -5 => KvError::StoreFull,
            -6 => KvError::Storage,
            -7 => KvError::TooManyOperations,
            code => KvError::Other(code),
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::NotFound => f.write_str("kv: no such key"),
            KvError::BadKey => f.write_str("kv: key is empty or longer than 1024 bytes"),
            KvError::TooLarge => f.write_str("kv: value is longer than 1 MiB"),
            KvError::NoSuchStore => f.write_str("kv: no such store (not granted to this module)"),
            KvError::StoreFull => f.write_str("kv: the store is full"),
            KvError::Storage => f.write_str("kv: the store cannot be read or written"),
            KvError::TooManyOperations => f.write_str("kv: too many operations for this request"),
            KvError::Other(0) => f.write_str("kv: the host's answer could not be read"),
            KvError::Other(code) => write!(f, "kv: unknown error {}", code),
        }
    }
}

impl std::error::Error for KvError {}

/// One page of [`Store::list`]: keys in byte order, and the cursor of the next page (`None` on the
/// last one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub keys: Vec<Vec<u8>>,
    pub cursor: Option<Vec<u8>>,
}

/// An open store, valid for the request that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    handle: i32,
}

/// Bytes asked for first: most values fit, in one host call.
const FIRST_TRY: usize = 256;
/// Bytes asked for first for a page (up to 100 keys).
const FIRST_PAGE: usize = 4096;

fn check(code: i32) -> Result<i32, KvError> {
    if code < 0 {
        Err(KvError::from_code(code))
    } else {
        Ok(code)
    }
}

/// Call `read(buffer, capacity)` (a host call returning a length or a code) until the buffer was
/// large enough; the host keeps a too-large result for the next identical call.
fn read_sized(first: usize, mut read: impl FnMut(*mut u8, usize) -> i32) -> Result<Vec<u8>, KvError> {
    let mut out: Vec<u8> = Vec::with_capacity(first);
    loop {
        let cap = out.capacity();
        let n = check(read(out.as_mut_ptr(), cap))? as usize;
        if n <= cap {
            // SAFETY: the host copied all n bytes into the buffer.
            unsafe { out.set_len(n) };
            return Ok(out);
        }
        out.reserve_exact(n);
    }
}

impl Store {
    /// Open the store `name`; `NoSuchStore` unless the module was granted it (`key_value_stores`).
    pub fn open(name: &str) -> Result<Store, KvError> {
        let handle = check(unsafe { host::open(name.as_ptr(), name.len()) })?;
        Ok(Store { handle })
    }

    /// The value stored under `key`, or `None` if there is none.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.as_ref();
        let read = read_sized(FIRST_TRY, |out, cap| unsafe { host::get(self.handle, key.as_ptr(), key.len(), out, cap) });
        match read {
            Ok(value) => Ok(Some(value)),
            Err(KvError::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Store `value` under `key`, replacing any value; durable once it returns `Ok`.
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), KvError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check(unsafe { host::set(self.handle, key.as_ptr(), key.len(), value.as_ptr(), value.len()) }).map(|_| ())
    }

    /// Remove `key`; `Ok` whether or not it existed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<(), KvError> {
        let key = key.as_ref();
        check(unsafe { host::delete(self.handle, key.as_ptr(), key.len()) }).map(|_| ())
    }

    /// Whether a value is stored under `key`.
    pub fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool, KvError> {
        let key = key.as_ref();
        check(unsafe { host::exists(self.handle, key.as_ptr(), key.len()) }).map(|found| found != 0)
    }

    /// Up to [`PAGE_KEYS`] keys starting with `prefix` (which may be empty), in byte order, after
    /// `cursor` (`None`: from the start). Pass the page's `cursor` to get the next page.
    pub fn list(&self, prefix: impl AsRef<[u8]>, cursor: Option<&[u8]>) -> Result<Page, KvError> {
        let prefix = prefix.as_ref();
        let cursor = cursor.unwrap_or(&[]);
        let data = read_sized(FIRST_PAGE, |out, cap| unsafe {
            host::list(self.handle, prefix.as_ptr(), prefix.len(), cursor.as_ptr(), cursor.len(), out, cap)
        })?;
        msgpack::decode_page(&data).map_err(|_| KvError::Other(0))
    }
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "isolate")]
    extern "C" {
        #[link_name = "kv_open"]
        pub fn open(name: *const u8, name_len: usize) -> i32;
        #[link_name = "kv_get"]
        pub fn get(store: i32, key: *const u8, key_len: usize, out: *mut u8, out_cap: usize) -> i32;
        #[link_name = "kv_set"]
        pub fn set(store: i32, key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> i32;
        #[link_name = "kv_delete"]
        pub fn delete(store: i32, key: *const u8, key_len: usize) -> i32;
        #[link_name = "kv_exists"]
        pub fn exists(store: i32, key: *const u8, key_len: usize) -> i32;
        #[link_name = "kv_list"]
        pub fn list(store: i32, prefix: *const u8, prefix_len: usize, cursor: *const u8, cursor_len: usize,
                    out: *mut u8, out_cap: usize) -> i32;
    }
}

/// Off wasm there is no host: the same calls, answered from per-thread maps with the host's checks
/// (every store is granted; `kv_operations` is not counted).
#[cfg(not(target_arch = "wasm32"))]
mod host {
    use super::{MAX_KEY, MAX_VALUE, PAGE_KEYS};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::slice::from_raw_parts;

    type Map = BTreeMap<Vec<u8>, Vec<u8>>;

    thread_local! {
        static STORES: RefCell<BTreeMap<String, Map>> = RefCell::new(BTreeMap::new());
        static HANDLES: RefCell<Vec<String>> = RefCell::new(Vec::new());
    }

    fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
        if len == 0 {
            &[]
        } else {
            unsafe { from_raw_parts(ptr, len) }
        }
    }

    fn with_store<T>(store: i32, key_len: usize, work: impl FnOnce(&mut Map) -> T) -> Result<T, i32> {
        let name = HANDLES.with(|h| h.borrow().get(store as usize).cloned()).ok_or(-4)?; // -1 is usize::MAX
        if key_len == 0 || key_len > MAX_KEY {
            return Err(-2);
        }
        Ok(STORES.with(|s| work(s.borrow_mut().entry(name).or_default())))
    }

    fn copy_out(data: &[u8], out: *mut u8, out_cap: usize) -> i32 {
        if data.len() <= out_cap && !data.is_empty() {
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
        }
        data.len() as i32
    }

    pub unsafe fn open(name: *const u8, name_len: usize) -> i32 {
        let name = bytes(name, name_len);
        let valid = !name.is_empty()
            && name.len() <= 64
            && name[0].is_ascii_alphanumeric()
            && name.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !valid {
            return -4;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        HANDLES.with(|h| {
            let mut handles = h.borrow_mut();
            handles.push(name);
            handles.len() as i32 - 1
        })
    }

    pub unsafe fn get(store: i32, key: *const u8, key_len: usize, out: *mut u8, out_cap: usize) -> i32 {
        let key = bytes(key, key_len);
        match with_store(store, key_len, |map| map.get(key).cloned()) {
            Ok(Some(value)) => copy_out(&value, out, out_cap),
            Ok(None) => -1,
            Err(code) => code,
        }
    }

    pub unsafe fn set(store: i32, key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> i32 {
        let (key, value) = (bytes(key, key_len), bytes(value, value_len));
        let stored = with_store(store, key_len, |map| {
            if value_len > MAX_VALUE {
                return -3;
            }
            map.insert(key.to_vec(), value.to_vec());
            0
        });
        stored.unwrap_or_else(|code| code)
    }

    pub unsafe fn delete(store: i32, key: *const u8, key_len: usize) -> i32 {
        let key = bytes(key, key_len);
        with_store(store, key_len, |map| map.remove(key)).map_or_else(|code| code, |_| 0)
    }

    pub unsafe fn exists(store: i32, key: *const u8, key_len: usize) -> i32 {
        let key = bytes(key, key_len);
        with_store(store, key_len, |map| map.contains_key(key) as i32).unwrap_or_else(|code| code)
    }

    pub unsafe fn list(store: i32, prefix: *const u8, prefix_len: usize, cursor: *const u8, cursor_len: usize,
                       out: *mut u8, out_cap: usize) -> i32 {
        if prefix_len > MAX_KEY || cursor_len > MAX_KEY {
            return -2;
        }
        let (prefix, cursor) = (bytes(prefix, prefix_len), bytes(cursor, cursor_len));
        // An empty prefix is allowed: judge the store with a stand-in key length of 1.
        let page = with_store(store, 1, |map| {
            let mut keys: Vec<Vec<u8>> = map
                .keys()
                .filter(|k| k.starts_with(prefix) && (cursor.is_empty() || k.as_slice() > cursor))
                .take(PAGE_KEYS + 1)
                .cloned()
                .collect();
            let more = keys.len() > PAGE_KEYS;
            keys.truncate(PAGE_KEYS);
            let next = if more { keys.last().cloned() } else { None };
            crate::msgpack::encode_page(&keys, next.as_deref())
        });
        match page {
            Ok(data) => copy_out(&data, out, out_cap),
            Err(code) => code,
        }
    }
}
