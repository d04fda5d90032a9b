// workerd_plain: the same answer without wasm (the C hello sample's body for GET /hello): workerd's own ceiling.
export default {
  async fetch() {
    return new Response("Hello, world! (from C, region local, client in local)\n", {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
