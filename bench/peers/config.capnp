# workerd config for the benchmark: two workers on two sockets (addresses set with --socket-addr).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "fresh", worker = .fresh),
    (name = "plain", worker = .plain),
  ],
  sockets = [
    (name = "fresh", address = "127.0.0.1:0", http = (), service = "fresh"),
    (name = "plain", address = "127.0.0.1:0", http = (), service = "plain"),
  ],
);

const fresh :Workerd.Worker = (
  modules = [
    (name = "worker", esModule = embed "fresh.js"),
    (name = "hello.wasm", wasm = embed "hello.wasm"),
  ],
  compatibilityDate = "2024-09-23",
);

const plain :Workerd.Worker = (
  modules = [(name = "worker", esModule = embed "plain.js")],
  compatibilityDate = "2024-09-23",
);
