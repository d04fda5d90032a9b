# workerd config for the benchmark: three workers on three sockets (addresses set with --socket-addr).
# bench/run.py copies this beside fresh.js and plain.js and writes hello.wasm (the C hello sample, the main
# guest) and hello-wat.wasm (bench/guests/hello.wat): the same bytes isolate serves.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "fresh", worker = .fresh),
    (name = "freshWat", worker = .freshWat),
    (name = "plain", worker = .plain),
  ],
  sockets = [
    (name = "fresh", address = "127.0.0.1:0", http = (), service = "fresh"),
    (name = "freshWat", address = "127.0.0.1:0", http = (), service = "freshWat"),
    (name = "plain", address = "127.0.0.1:0", http = (), service = "plain"),
  ],
);

const fresh :Workerd.Worker = (
  modules = [
    (name = "worker", esModule = embed "fresh.js"),
    (name = "guest.wasm", wasm = embed "hello.wasm"),
  ],
  compatibilityDate = "2024-09-23",
);

const freshWat :Workerd.Worker = (
  modules = [
    (name = "worker", esModule = embed "fresh.js"),
    (name = "guest.wasm", wasm = embed "hello-wat.wasm"),
  ],
  compatibilityDate = "2024-09-23",
);

const plain :Workerd.Worker = (
  modules = [(name = "worker", esModule = embed "plain.js")],
  compatibilityDate = "2024-09-23",
);
