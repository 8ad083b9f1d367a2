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

    def __init__(self, reply=None, delay: float = 0.0, retry_after: str = "1", stall_s: float = 2.0,
                 honour_stop: bool = False):
        self.script: list[str] = []
        self.default = "ok"
        self.bodies: list[dict] = []
        self.headers: list = []              # each request's headers (an email.message.Message)
        self.reply = reply or (lambda body: "<think>ok</think> <answer>A</answer>")
        self.delay, self.retry_after, self.stall_s = delay, retry_after, stall_s
        self.honour_stop = honour_stop       # cut at a request's `stop` string, as servers do
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
            finish = "stop"
            if self.honour_stop:       # OpenAI semantics: the stop string is not returned
                for stop in body.get("stop") or ():
                    if stop in text:
                        text = text[:text.index(stop)]
            payload = {"id": "fake", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": i, "finish_reason": finish,
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


# ---------------------------------------------------------------------------------------------
# A stand-in VLM for teachers in the loop
# ---------------------------------------------------------------------------------------------

def _parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _image_size(part: dict) -> tuple[int, int]:
    import base64
    import io

    from PIL import Image
    data = part["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data))).size


def sandbox_outputs(body: dict) -> list[dict]:
    """What the teacher has been shown so far, in order: {"text": the block's text, "sizes": the
    sizes of the images inside it} per `<sandbox_output>` block, from a continued assistant
    message (prefill) or from user messages after the first (turns)."""
    messages = body["messages"]
    carriers = []
    if messages[-1]["role"] == "assistant":
        carriers = [messages[-1]["content"]]
    else:
        users = [m for m in messages if m["role"] == "user"]
        carriers = [m["content"] for m in users[1:]]
    outputs: list[dict] = []
    for content in carriers:
        inside = None
        for part in _parts(content):
            if part["type"] == "image_url":
                if inside is not None:
                    inside["sizes"].append(_image_size(part))
                continue
            text = part["text"]
            while text:
                if inside is None:
                    start = text.find("<sandbox_output>")
                    if start < 0:
                        break
                    inside, text = {"text": "", "sizes": []}, text[start + len("<sandbox_output>"):]
                end = text.find("</sandbox_output>")
                if end < 0:
                    inside["text"] += text
                    break
                inside["text"] += text[:end]
                outputs.append(inside)
                inside, text = None, text[end + len("</sandbox_output>"):]
    return outputs


def loop_reply(first_code_bug: bool = False, ignore_stop: bool = False):
    """A VLM that writes in the loop and reads what the sandbox showed it. Round 1: the crop
    the prompt asks for (a plan's first region if there is one, else the target box with a
    margin) — with `first_code_bug`, code that raises instead. Later rounds describe the actual
    output they were shown (the produced image's size, or the error's name), then crop the
    target (after a plan's first round or an error) or answer. With `ignore_stop`, it runs on
    past `</code>` and invents an output, as a server that ignores `stop` would return."""

    def reply(body: dict) -> str:
        messages = body["messages"]
        if len(messages) == 1:                         # the decision prompt
            return "<decision>none</decision>"
        task = next(p["text"] for p in _parts(messages[1]["content"]) if p["type"] == "text")
        answer = re.search(r"The correct final answer is: (.*?)\. Reach it", task)
        answer = answer.group(1) if answer else "unknown"
        box = re.search(r"The target lies in the box \[(\d+), (\d+), (\d+), (\d+)\].*?of the (\d+)x(\d+) image",
                        task)
        first = re.search(r"(?:crop the region|First crop a generous region,) \[(\d+), (\d+), (\d+), (\d+)\]", task)
        seen = sandbox_outputs(body)
        out = "/mnt/data/temp_processed_images"

        def crop(region, name):
            x1, y1, x2, y2 = region
            return (f"<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
                    f"part = img.crop(({x1}, {y1}, {x2}, {y2}))\n"
                    f"part = part.resize((part.width * 2, part.height * 2))\n"
                    f'part.save("{out}/{name}.png")\nprint("{out}/{name}.png")\n```\n</code>')

        target = None
        if box:
            x1, y1, x2, y2, W, H = (int(v) for v in box.groups())
            m = int(0.3 * max(x2 - x1, y2 - y1)) + 10
            target = (max(0, x1 - m), max(0, y1 - m), min(W, x2 + m), min(H, y2 + m))
        if not seen:
            if first_code_bug:
                text = "<think>Let me zoom in. <code>\n```python\nprint(totl)\n```\n</code>"
            elif first:
                text = "<think>I will look at this area first. " + crop([int(v) for v in first.groups()], "first")
            elif target:
                text = "<think>The detail is small; I crop around it. " + crop(target, "zoom")
            else:
                return f"<think>I can see it directly.</think> <answer>{answer}</answer>"
            return text + ("<sandbox_output>fake</sandbox_output> Done.</think> <answer>x</answer>"
                           if ignore_stop else "")
        last = seen[-1]
        if last["sizes"]:
            w, h = last["sizes"][-1]
            what = f"The processed image I got back is {w}x{h} pixels."
        else:
            what = f"The sandbox said: {last['text'].strip()[:60]}."
        followed_plan = len(seen) == 1 and (first is not None or "Error" in last["text"])
        if followed_plan and target:
            return f" {what} That is not it yet, so I crop the right place. " + crop(target, "fixed")
        return f" {what} Now the detail is clear.</think> <answer>{answer}</answer>"

    return reply
