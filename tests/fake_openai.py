"""A loopback OpenAI-compatible server for tests (pipelines.core.llm, the OpenAI teacher, the
Dagster teacher resource), and a stand-in VLM that follows our guided teacher prompts."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """A loopback OpenAI-compatible server. `script` holds what the next requests get, in
    order ("ok", "429", "500", "400", "stall", "malformed": a 200 that is not a chat completion,
    "garbage": a 200 whose body is an HTML error page, as a misconfigured proxy sends); when
    empty, every request gets `default` ("ok"). `reply` turns a request body into the
    assistant's text."""

    def __init__(self, reply=None, delay: float = 0.0, retry_after: str = "1", stall_s: float = 2.0):
        self.script: list[str] = []
        self.default = "ok"
        self.bodies: list[dict] = []
        self.headers: list = []              # each request's headers (an email.message.Message)
        self.reply = reply or (lambda body: "<think>ok</think> <answer>A</answer>")
        self.delay, self.retry_after, self.stall_s = delay, retry_after, stall_s
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.headers.append(self.headers)     # case-insensitive lookups
                    action = fake.script.pop(0) if fake.script else fake.default
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    fake.respond(self, action, body)
                finally:
                    with fake.lock:
                        fake.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def respond(self, handler, action: str, body: dict) -> None:
        if action == "stall":
            time.sleep(self.stall_s)        # the client gives up first
            return
        if self.delay:
            time.sleep(self.delay)
        if action == "ok":
            n = body.get("n", 1)
            text = self.reply(body)
            payload = {"id": "fake", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": i, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}
                                   for i in range(n)],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 7 * n}}
            self._send(handler, 200, payload)
        elif action == "malformed":         # 200, but not a chat completion
            self._send(handler, 200, {"id": "fake", "object": "error", "detail": "overloaded"})
        elif action == "garbage":
            data = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        elif action == "429":
            self._send(handler, 429, {"error": "slow down"}, {"Retry-After": self.retry_after})
        else:
            self._send(handler, int(action), {"error": f"status {action}"})

    @staticmethod
    def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()



def guided_reply(body: dict) -> str:
    """A stand-in VLM that follows our guided prompts: it reads the private hints and writes
    Thyme-protocol text. Crop, rotate and no-code prompts are answered properly; contrast and
    computation prompts get chatter without an answer (so they must be quarantined)."""
    user = body["messages"][-1]["content"]
    text = user if isinstance(user, str) else user[-1]["text"]
    if text.startswith("Decide how"):
        return "<decision>none</decision>"
    answer = re.search(r"The correct final answer is: (.*?)\. Reach it", text)
    answer = answer.group(1) if answer else "unknown"
    box = re.search(r"The target lies in the box \[(\d+), (\d+), (\d+), (\d+)\].*?of the (\d+)x(\d+) image",
                    text)
    angle = re.search(r"turned (-?[\d.]+) degrees counter-clockwise", text)
    out = "/mnt/data/temp_processed_images"
    if box:
        x1, y1, x2, y2, W, H = (int(v) for v in box.groups())
        m = int(0.3 * max(x2 - x1, y2 - y1)) + 10
        x1, y1, x2, y2 = max(0, x1 - m), max(0, y1 - m), min(W, x2 + m), min(H, y2 + m)
        code = (f"from PIL import Image\nimg = Image.open(image_path)\n"
                f"crop = img.crop(({x1}, {y1}, {x2}, {y2}))\n"
                f"crop = crop.resize((crop.width * 2, crop.height * 2))\n"
                f'crop.save("{out}/zoom.jpg")\nprint("{out}/zoom.jpg")')
        return (f"<think>The detail is tiny; I crop around it and zoom in.\n<code>\n```python\n"
                f"{code}\n```\n</code>\nNow it is legible.</think> <answer>{answer}</answer>")
    if angle:
        code = (f"from PIL import Image\nimg = Image.open(image_path)\n"
                f"up = img.rotate(-{angle.group(1)}, expand=True)\n"
                f'up.save("{out}/up.png")\nprint("{out}/up.png")')
        # deliberately sloppy: no fence, no closing think tag
        return (f"<think>The page is tilted; let me turn it upright.<code>{code}</code>"
                f"Upright now. <answer>{answer}</answer>")
    if "without writing any code" in text:
        return f"<think>The image shows it directly.</think> <answer>{answer}</answer>"
    return "I am not able to help with this image."
