"""contrast: CLAHE, histogram equalisation, gamma, a percentile stretch or PIL enhancers,
sometimes on a crop around the target (slightly enlarged when small)."""

from __future__ import annotations

from pipelines.core.trajectory import Turn
from pipelines.samples.teachers.template.common import (
    Draw,
    Facts,
    Names,
    Skip,
    assemble,
    box_lines,
    crop_expr,
    gt_box,
    margin_box,
    open_line,
    option_sentence,
    save_lines,
)

_CONTRAST_LOOK = {
    "faded_document": ("The print on this page is very faint: the text is only slightly darker "
                       "than the paper", "the reference number"),
    "dark_photo": ("The photo is very dark, and the letters on the sign are barely lighter than "
                   "its background", "the sign"),
    "grey_panel": ("The label is grey text on a grey panel with very little contrast",
                   "the serial number"),
}
_CONTRAST_OBSERVE = {
    "faded_document": "the reference number reads {text}",
    "dark_photo": 'the sign clearly says "{text}"',
    "grey_panel": "the serial number after S/N is {text}",
}
_CONTRAST_INTRO = (
    "{look}, so reading {what} directly is error-prone. {plan}",
    "{look}. Enhancing the contrast should make {what} legible. {plan}",
    "{look}; I can barely make out {what}. {plan}",
)
_CONTRAST_CLOSE = (
    "After the enhancement the text stands out clearly: {observe}.{mc}",
    "The enhanced image is much easier to read, and {observe}.{mc}",
    "With the contrast boosted, {observe}. The answer is {text}.{mc}",
)
_METHOD_WORDS = {
    "clahe": "I'll apply CLAHE to the lightness channel (LAB), which boosts local contrast "
             "without blowing out the colours.",
    "equalize": "Histogram equalisation should spread the narrow range of intensities over the "
                "full scale.",
    "gamma": "A gamma correction will brighten the dark tones, followed by a min-max "
             "normalisation to use the full range.",
    "stretch": "I'll stretch the grey levels between the 1st and 99th percentiles to the full "
               "0-255 range.",
    "autocontrast": "PIL's autocontrast will stretch the histogram, ignoring a small fraction of "
                    "outliers.",
    "enhance": "I'll increase the contrast with PIL's ImageEnhance.",
    "bright": "I'll raise the brightness and then the contrast with PIL's ImageEnhance.",
}


def _contrast_method(d: Draw, lib: str, kind: str | None) -> str:
    # Global equalisation and autocontrast can flatten a dark sign against brighter
    # surroundings (measured), so a dark photo gets local or tone-curve methods.
    if lib == "cv2":
        return d.pick(("clahe", "gamma", "stretch", "clahe") if kind == "dark_photo"
                      else ("clahe", "equalize", "stretch", "clahe"))
    return d.pick(("bright", "enhance", "bright") if kind == "dark_photo"
                  else ("enhance", "autocontrast", "enhance"))


def _contrast_code(d: Draw, n: Names, method: str, box, upscale: int, stem: str) -> str:
    body = [open_line(n)]
    src = n.img
    if box is not None:
        body += box_lines(n, box, d.pick(("focus on the area with the text", "the faint text region",
                                           None)))
        body.append(f"{n.crop} = {crop_expr(n)}")
        src = n.crop
    out = d.pick(("enhanced", "result", "boosted"))
    if method == "clahe":
        clip = d.pick(("2.0", "3.0", "4.0"))
        tile = d.pick(("(8, 8)", "(8, 8)", "(4, 4)"))
        body += [f"lab = cv2.cvtColor({src}, cv2.COLOR_BGR2LAB)", "l, a, b = cv2.split(lab)",
                 f"clahe = cv2.createCLAHE(clipLimit={clip}, tileGridSize={tile})",
                 f"{out} = cv2.cvtColor(cv2.merge((clahe.apply(l), a, b)), cv2.COLOR_LAB2BGR)"]
    elif method == "equalize":
        if d.chance(0.5):
            body += [f"ycrcb = cv2.cvtColor({src}, cv2.COLOR_BGR2YCrCb)",
                     "ycrcb[:, :, 0] = cv2.equalizeHist(ycrcb[:, :, 0])",
                     f"{out} = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)"]
        else:
            body += [f"gray = cv2.cvtColor({src}, cv2.COLOR_BGR2GRAY)",
                     f"{out} = cv2.equalizeHist(gray)"]
    elif method == "gamma":
        g = d.pick(("0.4", "0.5", "0.6"))
        body += [f"gamma = {g}  # < 1 brightens the shadows",
                 "table = np.array([((i / 255.0) ** gamma) * 255 for i in range(256)]).astype(np.uint8)",
                 f"brighter = cv2.LUT({src}, table)",
                 f"{out} = cv2.normalize(brighter, None, 0, 255, cv2.NORM_MINMAX)"]
    elif method == "stretch":
        body += [f"gray = cv2.cvtColor({src}, cv2.COLOR_BGR2GRAY).astype(np.float32)",
                 "lo, hi = np.percentile(gray, (1, 99))",
                 f"{out} = np.clip((gray - lo) * 255.0 / (hi - lo), 0, 255).astype(np.uint8)"]
    elif method == "autocontrast":
        grey = ".convert(\"L\")" if d.chance(0.4) else ""
        body.append(f"{out} = ImageOps.autocontrast({src}{grey}, cutoff={d.pick((1, 2))})")
    elif method == "enhance":
        body.append(f"{out} = ImageEnhance.Contrast({src}).enhance({d.pick(('2.5', '3.0', '3.5'))})")
    else:   # bright
        body += [f"brighter = ImageEnhance.Brightness({src}).enhance({d.pick(('2.0', '2.5'))})",
                 f"{out} = ImageEnhance.Contrast(brighter).enhance({d.pick(('1.5', '1.8', '2.0'))})"]
    if upscale > 1:
        body.append("# enlarge a little for easier reading")
        if n.lib == "cv2":
            body.append(f"{out} = cv2.resize({out}, None, fx={upscale}, fy={upscale}, "
                        "interpolation=cv2.INTER_CUBIC)")
        else:
            body.append(f"{out} = {out}.resize(({out}.width * {upscale}, {out}.height * {upscale}), "
                        "Image.LANCZOS)")
    body += save_lines(d, n, out, stem)
    return assemble(body)


def build_contrast(f: Facts, d: Draw, u: float, share: float):
    if not f.width:
        raise Skip
    kind = f.meta.get("kind")
    look, what = _CONTRAST_LOOK.get(kind, ("The image has very low contrast", "the text"))
    observe = _CONTRAST_OBSERVE.get(kind, "the text reads {text}").format(text=f.text)
    n = Names.draw(d)
    method = _contrast_method(d, n.lib, kind)
    box, upscale = None, 1
    if f.meta.get("box") and d.chance(0.5):
        gt = gt_box(f)
        box = margin_box(d, gt, f.width, f.height, 0.4, 1.6)
        if max(box[2] - box[0], box[3] - box[1]) < 600:
            upscale = d.pick((1, 2))
    plan = _METHOD_WORDS[method]
    if box is not None:
        plan = d.pick(("I'll crop the area with the text and enhance it. ",
                       "Let me focus on the text region and boost it. ")) + plan
    intro = d.say(_CONTRAST_INTRO, look=look, what=what, plan=plan) + "\n\n"
    code = _contrast_code(d, n, method, box, upscale,
                          d.pick(("enhanced", "contrast", "clahe" if method == "clahe" else "boosted")))
    close = "\n\n" + d.say(_CONTRAST_CLOSE, observe=observe, text=f.text, mc=option_sentence(d, f))
    return "single", [Turn(intro, code), Turn(close)], f.answer
