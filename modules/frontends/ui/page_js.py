"""What the page does in the browser on load: icon buttons' tooltips, accessible names and a text fallback
where no emoji font is installed; the default theme (``--theme dark``; ``?__theme=`` in the URL wins)."""

from __future__ import annotations

import json

# icon -> (tooltip and accessible name, the text shown where the system has no emoji font)
ICONS = {
    "🔄": ("Refresh the list (rescan the folder)", "Refresh"),
    "🎲": ("Random seed: set -1, a new seed each time", "Random"),
    "♻": ("Reuse the seed of the selected image", "Reuse"),
    "♻️": ("Reuse the seed of the selected image", "Reuse"),
    "📒": ("Fill in every value this axis takes", "Fill"),
    "📂": ("Show the output folder (on the server)", "Folder"),
    "📐": ("Copy the width and height from the image", "Size"),
    "⇅": ("Swap the two axes", "Swap"),
}

# buttons whose element id ends so get a name of their own (two 🔄 must not read the same to a screen reader)
NAMED = [
    ("refresh_sd_vae", "Refresh the VAE list (rescan models/VAE)"),
    ("_styles_refresh", "Reload the styles (styles.csv)"),
]

_JS = """
() => {
  const ICONS = __ICONS__;
  const NAMED = __NAMED__;
  const THEME = "__THEME__";
  const url = new URL(window.location.href);
  if (!url.searchParams.has("__theme") && THEME !== "default") document.body.classList.toggle("dark", THEME === "dark");
  const emojiRenders = (() => {
    const draw = (text) => {
      const c = document.createElement("canvas"); c.width = c.height = 32;
      const g = c.getContext("2d"); g.textBaseline = "top"; g.font = "24px sans-serif"; g.fillText(text, 0, 0);
      return g.getImageData(0, 0, 32, 32).data.join(",");
    };
    try { return draw("\\u{1F3B2}") !== draw("\\u{10FFFD}"); } catch (e) { return true; }
  })();
  if (!emojiRenders) document.body.classList.add("sd-no-emoji");
  const apply = () => {
    document.querySelectorAll("button").forEach((b) => {
      const icon = b.dataset.sdIcon || b.textContent.trim();
      const known = ICONS[icon];
      if (!known || b.dataset.sdIconDone) return;
      b.dataset.sdIcon = icon; b.dataset.sdIconDone = "1";
      const own = NAMED.find(([suffix]) => (b.id || "").endsWith(suffix));
      const name = own ? own[1] : known[0];
      b.title = name; b.setAttribute("aria-label", name);
      if (!emojiRenders) { b.textContent = known[1]; b.classList.add("sd-icon-text"); }
    });
  };
  apply();
  new MutationObserver(apply).observe(document.body, {childList: true, subtree: true});
}
"""


def page_js(theme: str = "default") -> str:
    """The ``js`` for ``gr.mount_gradio_app``: runs once when the page has loaded."""
    js = _JS.replace("__ICONS__", json.dumps(ICONS, ensure_ascii=False)).replace("__NAMED__", json.dumps(NAMED))
    return js.replace("__THEME__", theme)


_SELECTED_INDEX_JS = """
(...args) => {
  const gallery = document.getElementById(__GALLERY__);
  const sizes = gallery ? [".thumbnail-small", ".thumbnail-lg"] : [];
  const lists = sizes.map((size) => [...gallery.querySelectorAll(".thumbnail-item" + size)]);
  for (const thumbs of lists) {
    const i = thumbs.findIndex((t) => t.classList.contains("selected"));
    if (i >= 0) { args[args.length - 1] = i; break; }
  }
  return args;
}
"""


def selected_index_js(gallery_id: str) -> str:
    """The ``js`` of a click that reads the gallery's selected picture: its last input (the index the last select
    event stored) becomes the index the gallery shows selected now. A select sent by a click or an arrow key may
    still be on its way when the button is clicked; the page is what the user sees. Nothing selected: unchanged."""
    return _SELECTED_INDEX_JS.replace("__GALLERY__", json.dumps(gallery_id))
