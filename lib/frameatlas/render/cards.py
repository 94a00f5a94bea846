"""Pictures of the render stage, drawn with Pillow: title cards, stills fitted to the output, and
contact sheets of rendered videos."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

__all__ = ["letterbox", "output_contact_sheet", "title_card"]


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "…"
    return lines


def title_card(title: str, subtitle: str, size: tuple[int, int]) -> Image.Image:
    """The opening card of an output video: the title (wrapped) and a line of counts."""
    width, height = size
    card = Image.new("RGB", size, (18, 22, 30))
    draw = ImageDraw.Draw(card)
    big, small = _load_font(max(12, height // 9)), _load_font(max(10, height // 17))
    lines = _wrap(draw, title, big, int(width * 0.88))
    line_height = int(max(12, height // 9) * 1.25)
    y = height // 2 - (len(lines) * line_height) // 2 - line_height // 3
    for line in lines:
        draw.text((width / 2, y), line, font=big, fill=(240, 242, 245), anchor="ma")
        y += line_height
    draw.text((width / 2, y + line_height // 3), subtitle, font=small, fill=(160, 170, 185), anchor="ma")
    return card


def letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to fit `size`, centred on black."""
    image = image.convert("RGB")
    scale = min(size[0] / image.width, size[1] / image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, "black")
    canvas.paste(resized, ((size[0] - resized.width) // 2, (size[1] - resized.height) // 2))
    return canvas


def _grab_frames(video: Path, wanted: list[tuple[float, str]]) -> list[tuple[Image.Image, str]]:
    """For each (output second, label), sorted by time, the first frame shown from half a frame before it on.

    Each piece of an output starts on a keyframe, so seeking to the keyframe before each wanted time
    decodes only the start of its piece, not the whole video."""
    import av

    grabs: list[tuple[Image.Image, str]] = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        half_frame = 0.5 / max(1.0, float(stream.average_rate or 24))
        index = 0
        while index < len(wanted):
            earliest = wanted[index][0] - half_frame
            container.seek(max(0, int(earliest / stream.time_base)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                t = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                if t + 1e-6 < earliest:
                    continue
                while index < len(wanted) and t + 1e-6 >= wanted[index][0] - half_frame:
                    grabs.append((frame.to_image(), wanted[index][1]))
                    index += 1
                break
            else:  # the video ends before the wanted time: nothing more to grab
                break
    return grabs


def output_contact_sheet(video: Path, segments: pd.DataFrame, title_seconds: float = 0.0, *, tile_width: int = 192,
                         columns: int = 6) -> Image.Image:  # fmt: skip
    """A grid of frames decoded from a rendered video: its title card and the middle of each segment,
    labelled with the source and time they were cut from."""

    from ..plots import format_time

    wanted = []
    if title_seconds > 0:
        wanted.append((title_seconds / 2, "title"))
    for row in segments.itertuples():
        middle = (row.output_start + row.output_end) / 2
        source_time = row.start + (middle - row.output_start) if row.mode == "clip" else row.best_timestamp
        wanted.append((middle, f"#{row.position} {Path(row.video_name).stem[:12]} {format_time(source_time)}"))
    wanted.sort()
    grabs = _grab_frames(video, wanted)
    if not grabs:
        return Image.new("RGB", (tile_width, tile_width // 2), "white")
    aspect = grabs[0][0].height / grabs[0][0].width
    tile_height, label = int(round(tile_width * aspect)), 14
    cols = min(columns, len(grabs))
    rows = math.ceil(len(grabs) / cols)
    sheet = Image.new("RGB", (cols * tile_width, rows * (tile_height + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, text) in enumerate(grabs):
        x, y = (i % cols) * tile_width, (i // cols) * (tile_height + label)
        sheet.paste(image.resize((tile_width - 2, tile_height - 2), Image.Resampling.BILINEAR), (x + 1, y + 1))
        draw.text((x + 3, y + tile_height + 1), text, fill="black")
    return sheet
