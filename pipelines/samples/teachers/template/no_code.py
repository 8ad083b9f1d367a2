"""no_code: one turn of reasoning and the answer (kind "direct"), for images simple enough to
answer at a glance (and text-only questions)."""

from __future__ import annotations

from pipelines.core.trajectory import Turn
from pipelines.samples.teachers.template.common import Draw, Facts, option_sentence


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _direct_reasoning(d: Draw, f: Facts) -> str:
    meta, text = f.meta, f.text
    kind = meta.get("kind")
    shapes = meta.get("shapes") or []
    no_tool = d.pick((" No zooming or other processing is needed.", " This is clear at a glance.",
                      " The image is simple enough to answer directly.", ""))
    if kind == "dominant_colour" and shapes:
        big = shapes[0]
        return d.pick((f"One large {big['shape']} dominates the picture, and its colour is plainly "
                       f"{text}.", f"The biggest shape is a {big['shape']}; it is {text}.")) + no_tool
    if kind == "count_circles":
        others = sorted({s["shape"] for s in shapes if s["shape"] != "circle"})
        rest = ""
        if others:
            rest = (f" The other shapes ({_and(others)}) don't count." if len(others) > 1
                    else f" The {others[0]}s don't count." if sum(
                        s["shape"] == others[0] for s in shapes) > 1
                    else f" The {others[0]} doesn't count.")
        return d.pick((f"The shapes are large and well separated. Going through them, I count {text} "
                       f"circle{'s' if text != '1' else ''}.{rest}",
                       f"There are only a few shapes on a plain background; {text} of them "
                       f"{'are circles' if text != '1' else 'is a circle'}.{rest}")) + no_tool
    if kind == "largest_shape":
        others = [s["shape"] for s in shapes if s["shape"] != text]
        tail = f", clearly bigger than the {_and(others)}" if others else ""
        return d.pick((f"The largest shape in the image is the {text}{tail}.",
                       f"Comparing the shapes, the {text} is by far the biggest.")) + no_tool
    if kind == "big_word":
        return d.pick((f'The large letters in the middle of the image spell "{text}".',
                       f'The big text is easy to read: it says "{text}".')) + no_tool
    if kind == "left_right" and len(shapes) == 2:
        a, b = shapes
        side_a = "left" if (a["box"][0] + a["box"][2]) < (b["box"][0] + b["box"][2]) else "right"
        return d.pick((f"The {a['colour']} {a['shape']} is on the {side_a} side of the picture and "
                       f"the {b['colour']} {b['shape']} on the other, so it is to the {text}.",
                       f"Comparing their horizontal positions, the {a['colour']} {a['shape']} lies "
                       f"to the {text} of the {b['colour']} {b['shape']}.")) + no_tool
    if f.sample.images:
        return d.pick((f"The answer can be read directly from the image: {text}.",
                       f"Looking at the image, the answer is {text}.")) + no_tool
    return f"The answer is {text}."


def build_no_code(f: Facts, d: Draw, u: float, share: float):
    return "direct", [Turn(_direct_reasoning(d, f) + option_sentence(d, f))], f.answer
