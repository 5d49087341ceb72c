"""The class names by label, in torchvision ImageFolder's order (sorted folder names): FAKE=0,
REAL=1. ``data.classes`` configures them; this is the fallback for files that do not record them."""

CLASSES: tuple[str, ...] = ("FAKE", "REAL")
