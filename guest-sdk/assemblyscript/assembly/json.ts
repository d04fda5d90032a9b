// JSON text helpers; exported by index.ts.

const HEX = "0123456789abcdef";

/**
 * `s` as a JSON string literal, quotes included (RFC 8259): `"` and `\` are escaped with a
 * backslash, control characters (U+0000 to U+001F) as `\u00XX`; everything else is kept as is.
 */
export function jsonQuote(s: string): string {
  let plain = true;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c == 0x22 || c == 0x5c) {
      plain = false;
      break;
    }
  }
  if (plain) return '"' + s + '"';
  const parts = new Array<string>();
  parts.push('"');
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x20 && c != 0x22 && c != 0x5c) continue;
    if (i > start) parts.push(s.substring(start, i));
    if (c == 0x22) parts.push('\\"');
    else if (c == 0x5c) parts.push("\\\\");
    else parts.push("\\u00" + HEX.charAt(c >> 4) + HEX.charAt(c & 0xf));
    start = i + 1;
  }
  if (start < s.length) parts.push(s.substring(start));
  parts.push('"');
  return parts.join("");
}
