#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/seed-*) from the recorded ComfyUI traffic,
the shipped templates and hand-made cases. Run from the repository root after changing a
fixture or an input layout; the output is committed. Entries that libFuzzer adds during
`make fuzz` are kept beside the seeds."""
import base64, hashlib, json, pathlib, struct, zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/testkit/fixtures/comfyui"
OUT = ROOT / "fuzz/corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


# ---- PNG / APNG -------------------------------------------------------------------------
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(w, h, color=2, depth=8, rows=None, extra=b"", frames=None, palette=None):
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = bytes((x * 37) % 256 for x in range(w * samples * depth // 8))
    raw = b"".join(b"\0" + row for _ in range(h)) if rows is None else rows
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    out += extra
    if frames:
        out += chunk(b"acTL", struct.pack(">II", frames, 0))
        seq = 0
        for i in range(frames):
            out += chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 8, 0, 0))
            seq += 1
            data = zlib.compress(raw)
            if i == 0:
                out += chunk(b"IDAT", data)
            else:
                out += chunk(b"fdAT", struct.pack(">I", seq) + data)
                seq += 1
    else:
        out += chunk(b"IDAT", zlib.compress(raw))
    return out + chunk(b"IEND", b"")


put("inspect_png", (FIX / "08_empty_image_output.png").read_bytes())
put("inspect_png", png(4, 4))
put("inspect_png", png(8, 2, color=6))
put("inspect_png", png(3, 3, color=0, depth=16))
put("inspect_png", png(5, 1, color=4))
put("inspect_png", png(4, 4, color=3, depth=8, palette=bytes(range(12)),
                       extra=chunk(b"tEXt", b"prompt\0a sky")
                       + chunk(b"zTXt", b"workflow\0\0" + zlib.compress(b'{"1": {}}'))
                       + chunk(b"iTXt", b"note\0\0\0\0\0hello")))
put("inspect_png", png(6, 6, frames=3))
put("inspect_png", png(600, 2))  # over the width limit
put("inspect_png", png(4, 4)[:40])  # truncated
put("inspect_png", b"GIF89a")

# ---- ComfyUI socket frames: one byte (even: text, odd: binary), then the frame ----------
seen = set()
for name in sorted(FIX.glob("*_ws.jsonl")) + sorted(FIX.glob("1[78]_*.jsonl")):
    for line in name.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "ws_text" and "raw" in rec:
            kind = json.loads(rec["raw"]).get("type")
            if (kind, "t") not in seen:
                seen.add((kind, "t"))
                put("comfyui_ws", b"\0" + rec["raw"].encode())
        elif rec["kind"] == "ws_binary" and ("b", rec.get("event_type")) not in seen:
            seen.add(("b", rec.get("event_type")))
            put("comfyui_ws", b"\1" + base64.b64decode(rec["b64"]))
small = png(300, 1)
put("comfyui_ws", b"\1" + struct.pack(">II", 1, 2) + png(3, 3))
put("comfyui_ws", b"\1" + struct.pack(">II", 1, 2) + small)
meta = b'{"prompt_id": "p", "image_type": "image/png"}'
put("comfyui_ws", b"\1" + struct.pack(">II", 4, len(meta)) + meta + png(2, 9))
put("comfyui_ws", b"\1" + struct.pack(">II", 4, 1000) + b"{}")
put("comfyui_ws", b'\0{"type": "execution_error", "data": {"prompt_id": "p", "node_id": "2", "node_type": "X", '
    b'"exception_type": "RuntimeError", "exception_message": "at http://10.0.0.1:8188/x", "traceback": ["a\\n"]}}')

# ---- ComfyUI JSON answers: history entries and POST /prompt's 400 answers ---------------
for name in sorted(FIX.glob("*_history.json")) + [FIX / "15_history_list.json", FIX / "16_history_race_probe.json"]:
    rec = json.loads(name.read_text())
    body = rec.get("response", {}).get("body_raw") if isinstance(rec, dict) else None
    if body:
        put("comfyui_http", body)
for rec in json.loads((FIX / "12_invalid_prompts.json").read_text()):
    body = rec.get("response", {}).get("body_raw")
    if body:
        put("comfyui_http", body)
put("comfyui_http", '{"p": {"status": {"status_str": "error", "messages": []}, "outputs": {}}}')

# ---- Workflow templates ------------------------------------------------------------------
for t in sorted((ROOT / "services/generator/templates").glob("*.json")):
    put("template", t.read_text())
put("template", '{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "x, {{ prompt }}, {{seed}}"}}}')
put("template", '{"1": {"class_type": "X", "inputs": {"a": ["2", 0]}}, "2": {"class_type": "Y", "inputs": {"s": "{{steps}}"}}}')
put("template", '{"1": {"class_type": "X", "inputs": {"a": "{{colour}}"}}}')

# ---- Tokens: one byte (even: raw token, odd: header NUL claims, signed by the target) ----
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


header = b'{"alg":"EdDSA","typ":"JWT","kid":"fuzz-key"}'
claims = (b'{"iss":"sakuga-auth","aud":"sakuga","sub":"7f8c7a62-3a57-4e1e-9f8e-2f5f0b1c9d10",'
          b'"role":"user","iat":1700000000,"exp":4102444800,"jti":"j1"}')
put("jwt", b"\1" + header + b"\0" + claims)
put("jwt", b"\1" + header + b"\0" + claims.replace(b"4102444800", b"1700000100"))
put("jwt", b"\1" + header.replace(b"EdDSA", b"none") + b"\0" + claims)
put("jwt", b"\0" + b64(header) + b"." + b64(claims) + b"." + b64(b"\0" * 64))
put("jwt", b"\0" + b64(b'{"alg":"none"}') + b"." + b64(claims) + b".")
put("jwt", b"\0sk_0123456789abcdef_secret")

# ---- SubmitJob specs: fixed-width numbers, then NUL-separated strings --------------------
def spec(kind=1, w=512, h=512, steps=20, batch=1, frames=0, fps=0, seed=None, cfg=0.0,
         max_pixels=64 << 20, rand=7, priority=0, texts=("a cat", "", "", "", "", "")):
    head = struct.pack("<iIIIIIIBQfQQi", kind, w, h, steps, batch, frames, fps,
                       seed is not None, seed or 0, cfg, max_pixels, rand, priority)
    return head + b"\0".join(t.encode() for t in texts)


put("validate", spec())
put("validate", spec(kind=2, frames=16, fps=12, seed=5, cfg=6.5,
                     texts=("sakura by the sea", "blurry", "euler_a", "comfyui", "anime-v3.safetensors", "key-1")))
put("validate", spec(w=2048, h=2048, batch=8, kind=2, frames=120))
put("validate", spec(texts=("a\u0007b", "", "magic", "gpu9000", "../etc", "with space")))
put("validate", spec(seed=2**64 - 1, cfg=float("nan"), priority=101))
