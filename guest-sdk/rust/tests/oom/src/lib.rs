//! Out-of-memory test guest for the Rust SDK, driven by tests/test_sdk_oom.py.
use isolate_sdk::{Error, Request, Response};

fn handle(req: Request) -> Result<Response, Error> {
    Ok(match req.path.as_str() {
        // Rust's alloc-error handler aborts when the SDK's heap cannot grow memory.
        "/alloc" => Response::new(200).body(vec![1u8; 1 << 30]),
        // try_reserve gets the failure back instead.
        "/recover" => {
            let mut buffer: Vec<u8> = Vec::new();
            match buffer.try_reserve(1 << 30) {
                Ok(()) => Response::new(200),
                Err(_) => Response::new(503),
            }
        }
        _ => Response::new(200),
    })
}

isolate_sdk::handler!(handle);
