"""updater: an A/B image-based OS updater in the style of Flatcar Container Linux.

Layers, top to bottom: ``cli`` -> flows -> domain (``slots``, ``gptformat``, ``verity``)
-> adapters (``gpt`` disk I/O, ``run`` for external commands).
"""

__version__ = "0.1.0"
