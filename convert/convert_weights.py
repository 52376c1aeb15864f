"""Convert released SuperAnimal PyTorch weights to a superanimal-jax model directory.

    python convert/convert_weights.py --pose superanimal_topviewmouse_hrnet_w32.pt --out models/topviewmouse

Same as ``superanimal-jax convert``; see ``superanimal_jax.convert`` for the library call.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from superanimal_jax.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(['convert', *sys.argv[1:]]))
