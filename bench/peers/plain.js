// workerd_plain: the same answer without wasm: workerd's own ceiling.
export default {
  async fetch() {
    return new Response("hello from isolate\n", { headers: { "content-type": "text/plain" } });
  },
};
