//! todo: a small JSON API on the key-value store "default".
//!
//!     GET    /todos        200 [{"id":1,"title":"...","done":false}, ...]
//!     POST   /todos        201 {"id":N,"title":"...","done":false}   body {"title":"..."} or plain text
//!     GET    /todos/:id    200 item, or 404 {"error":"not found"}
//!     DELETE /todos/:id    204, or 404 {"error":"not found"}
//!
//! Bad input is a 400 {"error":"..."}; a key-value failure a 500 {"error":"<name>","code":N}.
//! Items live under "todo:<id, 20 digits>" (so listing is in id order); the last id handed out is
//! under "todo-meta:last-id", outside the listed prefix.
use isolate_sdk::kv::{KvError, Store};
use isolate_sdk::{json, Error, Request, Response};

mod parse;
use parse::Value;

const STORE: &str = "default";
const PREFIX: &str = "todo:";
const LAST_ID: &str = "todo-meta:last-id";
/// The longest title, in characters.
const MAX_TITLE: usize = 1000;

struct Item {
    id: u64,
    title: String,
    done: bool,
}

impl Item {
    fn to_json(&self) -> String {
        format!("{{\"id\":{},\"title\":{},\"done\":{}}}", self.id, json::quote(&self.title), self.done)
    }

    /// An item as stored (its own JSON); `None` for anything else under the prefix (the store is
    /// shared with every module granted it).
    fn from_stored(id: u64, data: &[u8]) -> Option<Item> {
        let value = parse::parse(std::str::from_utf8(data).ok()?).ok()?;
        let title = match value.get("title") {
            Some(Value::Str(title)) => title.clone(),
            _ => return None,
        };
        let done = matches!(value.get("done"), Some(Value::Bool(true)));
        Some(Item { id, title, done })
    }
}

fn key(id: u64) -> String {
    format!("{}{:020}", PREFIX, id)
}

/// A JSON answer; `no-store`, since the items change (the edge caches only what a guest allows).
fn reply(status: u16, body: String) -> Response {
    Response::json(body).status(status).header("cache-control", "no-store")
}

/// Why a request failed, as the JSON response that says so.
struct Failure(Response);

impl Failure {
    fn new(status: u16, message: &str) -> Self {
        Failure(reply(status, format!("{{\"error\":{}}}", json::quote(message))))
    }
    fn bad(message: &str) -> Self {
        Failure::new(400, message)
    }
    fn not_found() -> Self {
        Failure::new(404, "not found")
    }
}

impl From<KvError> for Failure {
    fn from(err: KvError) -> Self {
        isolate_sdk::error(&format!("todo: key-value store {:?}: {}", STORE, err));
        Failure(reply(500, format!("{{\"error\":{},\"code\":{}}}", json::quote(err.name()), err.code())))
    }
}

type Answer = Result<Response, Failure>;

/// GET /todos: every item, in id order, following the list cursors. Each item is one `get`, so a
/// listing reaches the module's `kv_operations` limit (1,000 by default) at about 980 items.
fn list(store: &Store) -> Answer {
    let mut out = String::from("[");
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store.list(PREFIX, cursor.as_deref())?;
        for k in &page.keys {
            let id = std::str::from_utf8(&k[PREFIX.len()..]).ok().and_then(|digits| digits.parse::<u64>().ok());
            let item = match id {
                Some(id) => store.get(k)?.and_then(|data| Item::from_stored(id, &data)),
                None => None,
            };
            if let Some(item) = item {
                // (an item deleted since the page was read, or a foreign key, is left out)
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&item.to_json());
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.push(']');
    Ok(reply(200, out))
}

/// The title of a new item: a JSON body {"title": "..."} (when sent as JSON or when it starts with
/// `{`), else the whole body as plain text; trimmed, 1 to MAX_TITLE characters.
fn title_of(req: &Request) -> Result<String, Failure> {
    let text = std::str::from_utf8(&req.body).map_err(|_| Failure::bad("the body is not UTF-8"))?;
    let json_type = req.header("content-type").map_or(false, |t| t.to_ascii_lowercase().contains("json"));
    let title = if json_type || text.trim_start().starts_with('{') {
        let value = parse::parse(text).map_err(|why| Failure::bad(&format!("invalid JSON: {}", why)))?;
        match (&value, value.get("title")) {
            (_, Some(Value::Str(title))) => title.clone(),
            (Value::Object(_), Some(_)) => return Err(Failure::bad("title must be a string")),
            (Value::Object(_), None) => return Err(Failure::bad("missing title")),
            _ => return Err(Failure::bad("expected a JSON object like {\"title\": \"...\"}")),
        }
    } else {
        text.to_string()
    };
    let title = title.trim();
    if title.is_empty() {
        return Err(Failure::bad("the title is empty"));
    }
    if title.chars().count() > MAX_TITLE {
        return Err(Failure::bad("the title is longer than 1000 characters"));
    }
    Ok(title.to_string())
}

/// The next id: read the last one, add one, write it back. The store has no atomic increment, so
/// this is a read-increment-write: two requests creating items at the same moment can read the same
/// value. Skipping ids whose item exists narrows that window (a request that stored its item first
/// is not overwritten), but two requests interleaved exactly can still pick the same id, and the
/// later `set` replaces the earlier item. A counter that needs to be exact needs a store with
/// compare-and-set, or ids no two requests can share (e.g. from the request id).
fn next_id(store: &Store) -> Result<u64, Failure> {
    let last = store.get(LAST_ID)?.and_then(|data| String::from_utf8_lossy(&data).parse::<u64>().ok()).unwrap_or(0);
    let mut id = last + 1;
    while store.exists(key(id))? {
        id += 1;
    }
    store.set(LAST_ID, id.to_string())?; // before the item: a racing reader sees it sooner
    Ok(id)
}

/// POST /todos
fn create(store: &Store, req: &Request) -> Answer {
    let title = title_of(req)?;
    let item = Item { id: next_id(store)?, title, done: false };
    let body = item.to_json();
    store.set(key(item.id), &body)?;
    Ok(reply(201, body).header("location", format!("/todos/{}", item.id)))
}

/// The `:id` of /todos/:id: decimal digits, else a 400.
fn parse_id(text: &str) -> Result<u64, Failure> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::bad("the id must be a number"));
    }
    text.parse().map_err(|_| Failure::bad("the id is too large"))
}

/// GET /todos/:id
fn get_one(store: &Store, id: u64) -> Answer {
    let data = store.get(key(id))?.ok_or_else(Failure::not_found)?;
    let item = Item::from_stored(id, &data).ok_or_else(|| Failure::new(500, "the stored item is not valid"))?;
    Ok(reply(200, item.to_json()))
}

/// DELETE /todos/:id
fn delete_one(store: &Store, id: u64) -> Answer {
    if !store.exists(key(id))? {
        return Err(Failure::not_found());
    }
    store.delete(key(id))?;
    Ok(Response::new(204))
}

fn not_allowed(allow: &str) -> Answer {
    Ok(Failure::new(405, "method not allowed").0.header("allow", allow))
}

fn route(req: &Request) -> Answer {
    // The route "/todos/:id" passes `id` as a parameter; the path is the fallback for other routes.
    let id = req.param("id").map(String::from).or_else(|| {
        let rest = req.path.strip_prefix("/todos/")?.trim_end_matches('/');
        if rest.is_empty() {
            None
        } else {
            Some(rest.to_string())
        }
    });
    let method = req.method.as_str();
    match id {
        None => match method {
            "GET" | "HEAD" => list(&Store::open(STORE)?),
            "POST" => create(&Store::open(STORE)?, req),
            _ => not_allowed("GET, POST"),
        },
        Some(id) => match method {
            "GET" | "HEAD" => {
                let id = parse_id(&id)?;
                get_one(&Store::open(STORE)?, id)
            }
            "DELETE" => {
                let id = parse_id(&id)?;
                delete_one(&Store::open(STORE)?, id)
            }
            _ => not_allowed("GET, DELETE"),
        },
    }
}

fn handle(req: Request) -> Result<Response, Error> {
    Ok(route(&req).unwrap_or_else(|failure| failure.0))
}

isolate_sdk::handler!(handle);
