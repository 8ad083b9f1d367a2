"""rotate: the image rotated back (PIL `rotate(expand=True)` or OpenCV `warpAffine` on the
enlarged canvas). Some samples get "error_correction": rotated the wrong way, a wrong keyword
(`fill` for `fillcolor`), the canvas size used before it was computed.
"""

from __future__ import annotations

from pipelines.core.trajectory import Turn
from pipelines.samples.teachers.template.common import (
    Draw,
    Facts,
    Names,
    Skip,
    assemble,
    open_line,
    option_sentence,
    save_lines,
)


def _tilt_words(angle: int) -> tuple[str, str]:
    """(how the content looks, how to fix it), in rough words: never the exact angle."""
    t = angle if angle <= 180 else 360 - angle
    ccw = angle <= 180
    turn = "clockwise" if ccw else "counter-clockwise"
    if t >= 170:
        return "upside down", "turn it half way round"
    if 85 <= t <= 95:
        side = "counter-clockwise, so the lines run from bottom to top" if ccw else \
            "clockwise, so the lines run from top to bottom"
        return f"turned on its side ({side})", f"turn it a quarter turn {turn}"
    r = int(round(t / 10.0) * 10)
    if r == t:
        rough = f"somewhere between {t - 5} and {t + 5} degrees"
    else:
        rough = f"roughly {r} degrees"
    how = "counter-clockwise" if ccw else "clockwise"
    return f"tilted by {rough} {how}", f"rotate it {turn} by that amount"


def _rotate_subject(f: Facts) -> tuple[str, str]:
    """(the document noun, what the answer is once readable)."""
    kind, target, text = f.meta.get("kind"), str(f.meta.get("target", "")), f.text
    noun = {"receipt": "receipt", "document": "document", "sign": "sign"}.get(kind, "text")
    if target == "receipt total":
        obs = f"the TOTAL line of the receipt shows {text}"
    elif target == "store name":
        obs = f"the store name printed at the top is {text}"
    elif target.startswith("price of "):
        obs = f"the line for {target[9:].lower()} shows {text}"
    elif target == "document title":
        obs = f'the heading at the top reads "{text}"'
    elif target == "reference number":
        obs = f"the reference number after \"Ref. No.\" is {text}"
    elif kind == "sign":
        obs = f'the sign reads "{text}"'
    else:
        obs = f"the text now reads {text}"
    return noun, obs


_ROT_INTRO = (
    "The {noun} in this image is not upright: its text is {looks}, which makes it hard to "
    "read. I'll {fix}, expanding the canvas so no corner gets cut off.",
    "Reading this is awkward because the {noun} is {looks}. Let me straighten the image "
    "first: {fix}, keeping the whole content.",
    "The lines of text on the {noun} are {looks}. Before answering, I'll rotate the image back "
    "so the text is horizontal.",
)
_ROT_CLOSE = (
    "Now the {noun} is upright and the text reads normally: {observe}.{mc}",
    "After the rotation the {noun} is level, and {observe}.{mc}",
    "With the image straightened, {observe}. The answer is {text}.{mc}",
)
_ROT_AFTER_WRONG = (
    "The {noun} is still not upright; it is now turned even further. I rotated the wrong way: "
    "{rule}. Let me use the opposite sign.",
    "That made it worse: the text is even more tilted than before, because {rule}. "
    "Flipping the sign of the angle.",
)
_ROT_AFTER_FILL = (
    "The call failed: `Image.rotate` has no `fill` argument; the background colour is set "
    "with `fillcolor`. Fixing the keyword.",
    "TypeError: `rotate()` got an unexpected keyword `fill`. In PIL it is called "
    "`fillcolor`. Let me correct that.",
)
_ROT_AFTER_SIZE = (
    "NameError: I used `new_w` and `new_h` before computing them. The enlarged canvas size "
    "comes from the rotation matrix's cosine and sine; let me add that.",
    "The code failed because the new canvas size was never computed. I'll derive it from the "
    "rotation matrix and run it again.",
)


def _rotate_code(d: Draw, n: Names, a: int, stem: str, mistake: str | None = None) -> str:
    body = [open_line(n)]
    direction = "clockwise" if a < 0 else "counter-clockwise"
    if n.lib == "pil":
        comment = d.pick((f"rotate {direction}; expand=True keeps the corners",
                          f"PIL rotates counter-clockwise for positive angles; {a} turns the text back",
                          "straighten the text, enlarging the canvas to fit"))
        fill = d.pick(("", ", fillcolor=(255, 255, 255)", ', fillcolor="white"',
                       ", fillcolor=(0, 0, 0)"))
        if mistake == "fill":
            fill = ", fill=(255, 255, 255)"
        resample = d.pick(("", ", resample=Image.BICUBIC", ", resample=Image.Resampling.BILINEAR"))
        out = d.pick(("upright", "rotated", "straight"))
        body += [f"# {comment}", f"{out} = {n.img}.rotate({a}, expand=True{resample}{fill})"]
    else:
        hw = d.pick((("h", "w"), ("height", "width")))
        m = d.pick(("M", "rot_mat", "matrix"))
        out = d.pick(("upright", "rotated", "straight"))
        h, w = hw
        body.append(f"{h}, {w} = {n.img}.shape[:2]")
        body.append(f"# positive angles are counter-clockwise in OpenCV; {a} turns it {direction}")
        body.append(f"{m} = cv2.getRotationMatrix2D(({w} / 2, {h} / 2), {a}, 1.0)")
        size = []
        if d.chance(0.5):
            size += [f"cos, sin = abs({m}[0, 0]), abs({m}[0, 1])",
                     f"new_w = int({h} * sin + {w} * cos)", f"new_h = int({h} * cos + {w} * sin)"]
        else:
            size += [f"rad = math.radians({a})",
                     f"new_w = int(abs({w} * math.cos(rad)) + abs({h} * math.sin(rad)))",
                     f"new_h = int(abs({h} * math.cos(rad)) + abs({w} * math.sin(rad)))"]
        if mistake != "size":
            body += size
        body += ["# shift so the result is centred on the enlarged canvas",
                 f"{m}[0, 2] += new_w / 2 - {w} / 2", f"{m}[1, 2] += new_h / 2 - {h} / 2"]
        border = d.pick(("", ", borderValue=(255, 255, 255)", ", borderValue=(0, 0, 0)"))
        flags = d.pick(("", ", flags=cv2.INTER_LINEAR", ", flags=cv2.INTER_CUBIC"))
        body.append(f"{out} = cv2.warpAffine({n.img}, {m}, (new_w, new_h){flags}{border})")
    body += save_lines(d, n, out, stem)
    return assemble(body)


def build_rotate(f: Facts, d: Draw, u: float, share: float):
    angle = f.meta.get("angle")
    if angle is None or not f.width:
        raise Skip
    angle = int(round(float(angle))) % 360
    if angle == 0:
        raise Skip
    a = -angle if angle <= 180 else 360 - angle     # the rotation that undoes it
    looks, fix = _tilt_words(angle)
    noun, observe = _rotate_subject(f)
    fields = dict(noun=noun, looks=looks, fix=fix, observe=observe, text=f.text)
    n = Names.draw(d)
    stem = d.pick(("rotated", "upright", "deskewed", "straightened", f"{noun}_upright"))
    intro = d.say(_ROT_INTRO, **fields) + "\n\n"
    close = d.say(_ROT_CLOSE, mc=option_sentence(d, f), **fields)
    if u < share / 2:
        t = angle if angle <= 180 else 360 - angle
        options = ["fill" if n.lib == "pil" else "size"] + (["direction"] if t <= 110 else [])
        mistake = d.pick(options)
        if mistake == "direction":
            code1 = _rotate_code(d, n, -a, stem)
            rule = ("PIL's rotate() turns counter-clockwise for positive angles" if n.lib == "pil"
                    else "getRotationMatrix2D treats positive angles as counter-clockwise")
            after = d.say(_ROT_AFTER_WRONG, rule=rule, **fields)
        else:
            code1 = _rotate_code(d, n, a, stem, mistake=mistake)
            after = d.say(_ROT_AFTER_FILL if mistake == "fill" else _ROT_AFTER_SIZE, **fields)
        code2 = _rotate_code(d, n, a, stem)
        turns = [Turn(intro, code1), Turn("\n\n" + after + "\n\n", code2), Turn("\n\n" + close)]
        return "error_correction", turns, f.answer
    return "single", [Turn(intro, _rotate_code(d, n, a, stem)), Turn("\n\n" + close)], f.answer
